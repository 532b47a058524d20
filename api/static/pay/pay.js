/*
 * Veilbill hosted payment page.
 *
 * Card data never passes through this script or Veilbill's server: the gateway's card element is
 * handed to the gateway's own JavaScript (confirmCardSetup), which sends the card to the gateway's
 * origin and gives back a payment method token (pm_…). Only that token is posted to Veilbill, which
 * charges it; 3-D Secure, when the bank asks for it, runs in the gateway's JavaScript too.
 *
 * Configuration comes from data-* attributes on the form (the page's CSP forbids inline scripts).
 * Messages shown to the payer are our own: the gateway's text is never displayed.
 */
(function () {
  "use strict";

  var form = document.getElementById("payment-form");
  if (!form) {
    return;
  }

  var config = {
    publishableKey: form.dataset.publishableKey,
    setupUrl: form.dataset.setupUrl,
    confirmUrl: form.dataset.confirmUrl,
    stateUrl: form.dataset.stateUrl,
  };
  var button = document.getElementById("pay-button");
  var buttonLabel = button.querySelector(".pay-button__label");
  var idleLabel = buttonLabel.textContent;
  var outcome = document.getElementById("outcome");
  var outcomeTitle = document.getElementById("outcome-title");
  var outcomeText = document.getElementById("outcome-text");
  var badge = document.getElementById("status-badge");
  var loading = document.getElementById("card-loading");
  var amountLabel = document.getElementById("amount-label");

  var PAID = ["paid", "partially_refunded", "refunded"];
  var FINISHED_PAYMENT = ["failed", "canceled"];
  // Bounded polling of /state after a charge (about 25 s in all); each poll asks the gateway.
  var POLL_DELAYS_MS = [0, 400, 600, 800, 1000, 1000, 1500, 1500, 2000, 2000, 2500, 3000, 3000, 3000, 3000];

  var GENERIC_DECLINE = "Your card was declined. Please try another card or contact your bank.";
  // Decline codes worth a specific hint. Codes that hint at fraud (lost_card, stolen_card,
  // fraudulent, pickup_card…) deliberately get the generic message.
  var DECLINE_MESSAGES = {
    insufficient_funds: "Your card has insufficient funds. Please try another card.",
    expired_card: "Your card has expired. Check the expiry date or try another card.",
    incorrect_cvc: "The card's security code is incorrect. Check it and try again.",
    invalid_cvc: "The card's security code is incorrect. Check it and try again.",
    incorrect_number: "The card number is incorrect. Check it and try again.",
    invalid_number: "The card number is incorrect. Check it and try again.",
    invalid_expiry_month: "The card's expiry date is not valid. Check it and try again.",
    invalid_expiry_year: "The card's expiry date is not valid. Check it and try again.",
    incorrect_zip: "The postal code does not match the card. Check it and try again.",
    processing_error: "We could not process your card. Please try again in a moment.",
    card_velocity_exceeded: "Your card has reached its limit. Please try another card or contact your bank.",
    withdrawal_count_limit_exceeded:
      "Your card has reached its limit. Please try another card or contact your bank.",
    currency_not_supported: "Your card does not support this currency. Please try another card.",
    card_not_supported: "Your card does not support this type of purchase. Please try another card.",
    authentication_required: "Your bank needs to confirm this payment. Please try again.",
  };
  var AUTHENTICATION_FAILURES = [
    "payment_intent_authentication_failure",
    "setup_intent_authentication_failure",
  ];
  var CHECK_DETAILS = "We could not verify this card. Check the details and try again, or use another card.";
  var UNREACHABLE = "We could not reach the payment service. Please try again in a moment.";

  if (typeof window.Stripe !== "function" || !config.publishableKey) {
    show("error", "Card payments are unavailable", "The secure card form could not be loaded. Please reload the page.");
    loading.textContent = "";
    return;
  }

  var stripe = window.Stripe(config.publishableKey);
  var card = stripe.elements().create("card");
  loading.remove();
  card.mount("#card-element");
  button.disabled = false;

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (button.disabled) {
      return;
    }
    setBusy(true, "Processing…");
    show("pending", "Processing your payment", "Please keep this page open.");
    pay()
      .catch(function () {
        show("error", "Payment not completed", UNREACHABLE);
      })
      .finally(function () {
        if (!form.hidden) {
          setBusy(false);
        }
      });
  });

  async function pay() {
    var setup = await call("POST", config.setupUrl, {});
    if (!setup.ok) {
      return showProblem(setup);
    }
    var confirmed = await stripe.confirmCardSetup(setup.body.client_secret, { payment_method: { card: card } });
    if (confirmed.error) {
      return showGatewayError(confirmed.error);
    }
    var method = confirmed.setupIntent && confirmed.setupIntent.payment_method;
    var methodId = typeof method === "string" ? method : method && method.id;
    if (!methodId) {
      return show("error", "Payment not completed", CHECK_DETAILS);
    }

    var charged = await call("POST", config.confirmUrl, { payment_method: methodId });
    if (!charged.ok) {
      return showProblem(charged);
    }
    var authenticating = charged.body.status === "requires_action";
    if (authenticating) {
      setBusy(true, "Waiting for your bank…");
      show("pending", "Confirm with your bank", "Complete the verification your bank shows you.");
      var action = await stripe.confirmCardPayment(charged.body.client_secret);
      if (action.error && AUTHENTICATION_FAILURES.indexOf(action.error.code) === -1) {
        return showGatewayError(action.error);
      }
      setBusy(true, "Processing…");
      show("pending", "Processing your payment", "Please keep this page open.");
    }
    return settle(authenticating);
  }

  // Polls /state (which makes the server ask the gateway) until the invoice is paid or the payment
  // has failed; gives up after POLL_DELAYS_MS with a "still processing" message.
  async function settle(authenticating) {
    for (var i = 0; i < POLL_DELAYS_MS.length; i++) {
      await sleep(POLL_DELAYS_MS[i]);
      var state = await call("GET", config.stateUrl);
      if (!state.ok) {
        if (state.status === 404) {
          return showProblem(state);
        }
        continue;
      }
      var invoice = state.body;
      if (PAID.indexOf(invoice.status) !== -1) {
        return showPaid(invoice);
      }
      if (invoice.status !== "open") {
        return showClosed();
      }
      if (FINISHED_PAYMENT.indexOf(invoice.payment_status) !== -1) {
        if (authenticating) {
          return showAuthenticationFailed();
        }
        return showDeclined(null);
      }
    }
    return show(
      "pending",
      "Payment still processing",
      "Your bank has not confirmed the payment yet. You can close this page and open the link again later."
    );
  }

  function showProblem(response) {
    var problem = response.body || {};
    switch (problem.code) {
      case "card_declined":
        return showDeclined(problem.decline_code);
      case "payment_session_invalid":
        return show("error", "This payment link has expired", "Ask the business for a new payment link.");
      case "invalid_state_transition":
      case "payment_in_progress":
        return settle(false);
      case "payment_method_invalid":
        return show("error", "This card cannot be used", "Please try another card.");
      case "gateway_unavailable":
        return show("error", "Payment not completed", UNREACHABLE);
      default:
        return show("error", "Payment not completed", "Something went wrong on our side. Please try again.");
    }
  }

  function showGatewayError(error) {
    var code = (error && (error.decline_code || error.code)) || "";
    if (AUTHENTICATION_FAILURES.indexOf(code) !== -1) {
      return showAuthenticationFailed();
    }
    if (code === "card_declined" || code === "generic_decline") {
      return showDeclined(error.decline_code || null);
    }
    if (Object.prototype.hasOwnProperty.call(DECLINE_MESSAGES, code)) {
      return show("error", "Check your card", DECLINE_MESSAGES[code]);
    }
    return show("error", "Check your card", CHECK_DETAILS);
  }

  function showDeclined(declineCode) {
    var known = declineCode && Object.prototype.hasOwnProperty.call(DECLINE_MESSAGES, declineCode);
    return show("declined", "Payment declined", known ? DECLINE_MESSAGES[declineCode] : GENERIC_DECLINE);
  }

  function showAuthenticationFailed() {
    return show(
      "authentication_failed",
      "Authentication failed",
      "Your bank could not confirm this payment, so you have not been charged. Please try again or use another card."
    );
  }

  function showPaid(invoice) {
    form.hidden = true;
    badge.textContent = "Paid";
    badge.className = "badge badge--paid";
    amountLabel.textContent = "Amount paid";
    var number = invoice.invoice_number ? "Invoice " + invoice.invoice_number + " is paid. " : "";
    return show("success", "Payment successful", number + "Thank you for your payment.");
  }

  function showClosed() {
    form.hidden = true;
    badge.textContent = "Closed";
    badge.className = "badge badge--closed";
    return show("closed", "Nothing to pay", "This invoice can no longer be paid online. Please contact the business.");
  }

  function show(kind, title, text) {
    var style = { success: "success", pending: "pending", closed: "neutral" }[kind] || "error";
    outcome.className = "outcome outcome--" + style;
    outcome.dataset.outcome = kind;
    outcomeTitle.textContent = title;
    outcomeText.textContent = text;
    outcome.hidden = false;
  }

  function setBusy(busy, label) {
    button.disabled = busy;
    button.setAttribute("aria-busy", busy ? "true" : "false");
    buttonLabel.textContent = busy ? label : idleLabel;
  }

  async function call(method, url, body) {
    var init = {
      method: method,
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var response = await fetch(url, init);
    var parsed = null;
    try {
      parsed = await response.json();
    } catch (ignored) {
      parsed = null;
    }
    return { ok: response.ok, status: response.status, body: parsed };
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }
})();
