// Webhooks (project admins): the project's endpoints, adding or editing one, a new signing
// secret (shown once, as when it is added), sending a test event, and the delivery log of the
// endpoint chosen, where a delivered or failed delivery can be sent again.

import { api, query, seg } from "../api.js";
import { badge, clear, confirmDialog, copyable, emptyState, errorBox, field, focusAfterRedraw, h, leftPastLastPage, openDialog, pager, rowControl, table, timeElement, toast, wrappingAddress } from "../ui.js";

const STATE_BADGES = { delivered: ["Delivered", "succeeded"], pending: ["Pending", "pending"], failed: ["Failed", "failed"] };

export async function webhooksView(main, ctx) {
  const { project } = ctx;
  const base = `/projects/${seg(project.name)}/webhooks`;
  document.title = `Webhooks · ${project.name} · Berth`;
  const body = h("div", { class: "loading" }, "Loading webhooks…");
  clear(
    main,
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("h1", {}, "Webhooks"),
        h("p", { class: "muted" }, "Pushes, deletes, tag restores, garbage collection runs and refusals in this project are POSTed to these endpoints as CloudEvents, signed with the endpoint's secret (X-Berth-Signature), in order, and retried for a day. A test event goes at once, ahead of anything waiting, and is not retried. Redeliver sends a past delivery's event again, after anything waiting."),
      ),
      h("button", { type: "button", class: "primary", onclick: () => createWebhook(ctx, base) }, "Add webhook"),
    ),
    body,
  );
  const hooks = await api.get(base);
  if (ctx.stale()) return;
  const chosen = hooks.find((w) => String(w.id) === ctx.query.webhook) || hooks[0];
  const log = h("section", { "aria-label": "Delivery log" });
  clear(
    body,
    table(
      [
        { title: "URL", cell: (w) => [h("code", { class: "address" }, wrappingAddress(w.url)), w.description ? h("div", { class: "muted" }, w.description) : null] },
        { title: "Events", cell: (w) => (w.event_types.length ? w.event_types.map((t) => h("div", {}, t.replace(/^io\.berth\./, ""))) : "All") },
        { title: "State", cell: (w) => (w.enabled ? badge("Enabled", "active") : badge("Disabled", "disabled")) },
        { title: "Signed", cell: (w) => (w.signed ? "Yes" : "No") },
        {
          title: "Actions",
          cell: (w) =>
            h(
              "span",
              { class: "actions" },
              h("button", { type: "button", class: "small", disabled: !w.enabled, "aria-label": `Send test event to ${w.url}`, onclick: (e) => sendTest(ctx, base, w, e.currentTarget) }, "Send test event"),
              h("button", { type: "button", class: "small", "aria-label": `Delivery log of ${w.url}`, onclick: () => ctx.navigate(`/projects/${seg(project.name)}/webhooks`, { webhook: w.id }) }, "Delivery log"),
              h("button", { type: "button", class: "small", "aria-label": `Edit webhook ${w.url}`, onclick: (e) => editWebhook(ctx, base, w, e.currentTarget) }, "Edit"),
              h("button", { type: "button", class: "small", "aria-label": `${w.signed ? "New secret" : "Add secret"} for ${w.url}`, onclick: (e) => newSecret(ctx, base, w, e.currentTarget) }, w.signed ? "New secret" : "Add secret"),
              h("button", { type: "button", class: "small", "aria-label": `${w.enabled ? "Disable" : "Enable"} webhook ${w.url}`, onclick: (e) => setEnabled(ctx, base, w, !w.enabled, e.currentTarget) }, w.enabled ? "Disable" : "Enable"),
              h("button", { type: "button", class: "small danger-text", "aria-label": `Delete webhook ${w.url}`, onclick: (e) => deleteWebhook(ctx, base, w, e.currentTarget) }, "Delete"),
            ),
        },
      ],
      hooks,
      {
        caption: "Webhooks",
        rowKey: (w) => w.id,
        empty: emptyState("No webhooks yet", h("p", {}, "Add one to tell CI or a deploy tool about pushes.")),
      },
    ),
    chosen ? log : null,
  );
  if (chosen) await showLog(ctx, base, chosen, log, Number(ctx.query.page || 1));
}

async function showLog(ctx, base, webhook, section, page) {
  const data = await api.get(`${base}/${webhook.id}/deliveries${query({ page, per_page: 20 })}`);
  const here = `/projects/${seg(ctx.project.name)}/webhooks`;
  if (ctx.stale() || leftPastLastPage(data, (p) => ctx.navigate(here, { webhook: webhook.id, page: p }, { replace: true }))) return;
  const last = (d) => d.attempt_log[0] || null;
  clear(
    section,
    h("h2", {}, "Delivery log ", h("span", { class: "muted address" }, wrappingAddress(webhook.url))),
    table(
      [
        { title: "ID", cell: (d) => String(d.id) },
        {
          title: "Event",
          cell: (d) => [
            h("span", { title: d.event_id }, d.event_type.replace(/^io\.berth\./, "")),
            d.redelivery_of ? h("div", { class: "muted" }, `Resends delivery ${d.redelivery_of}`) : null,
          ],
        },
        { title: "Subject", cell: (d) => (d.event.subject ? h("code", {}, d.event.subject) : "-") },
        { title: "State", cell: (d) => badge(...STATE_BADGES[d.state]) },
        { title: "Attempts", cell: (d) => String(d.attempts) },
        { title: "Response", cell: (d) => (last(d)?.status_code ? String(last(d).status_code) : "-") },
        { title: "Duration", cell: (d) => (last(d) ? `${last(d).duration_ms} ms` : "-") },
        { title: "Error", cell: (d) => last(d)?.error || "-" },
        { title: "Next attempt", cell: (d) => nextAttempt(d, webhook) },
        { title: "Queued", cell: (d) => timeElement(d.created_at) },
        { title: "Actions", cell: (d) => redeliverButton(ctx, base, webhook, d) },
      ],
      data.items,
      { caption: "Deliveries", rowKey: (d) => d.id, empty: emptyState("Nothing delivered yet", h("p", {}, "Send a test event to try the endpoint.")) },
    ),
    pager(data, (p) => ctx.navigate(here, { webhook: webhook.id, page: p })),
  );
}

// A pending delivery waits for its next attempt, or (an endpoint gets its events in order)
// for the earlier delivery it is queued behind, or for its endpoint to be enabled.
function nextAttempt(d, webhook) {
  if (d.state !== "pending") return "-";
  if (!webhook.enabled) return h("span", { class: "muted" }, "Endpoint disabled");
  if (d.waiting_for !== null) {
    const why = `Deliveries to an endpoint go in order: this one is sent once delivery ${d.waiting_for} is delivered or given up`;
    return h("span", { title: why }, `After delivery ${d.waiting_for}`);
  }
  return timeElement(d.next_attempt_at);
}

// A delivered or failed delivery's event, sent again as a new delivery: at the end of the
// endpoint's queue (its events go in order), retried like any; a pending one is being sent.
function redeliverButton(ctx, base, webhook, d) {
  if (d.state === "pending") return null;
  const why = webhook.enabled ? "Send this event again, after anything queued for the endpoint" : "The endpoint is disabled: enable it to send it events";
  return h("button", { type: "button", class: "small", title: why, disabled: !webhook.enabled, onclick: (e) => redeliver(ctx, base, webhook, d, e.currentTarget) }, "Redeliver");
}

async function redeliver(ctx, base, webhook, d, button) {
  try {
    const queued = await api.post(`${base}/${webhook.id}/deliveries/${d.id}/redeliver`);
    const when = queued.event_type === "io.berth.webhook.test" ? "it is sent within a few seconds, once" : "it is sent after anything queued before it, and retried for a day";
    toast(`Delivery ${d.id} queued again as delivery ${queued.id}: ${when}`);
    ctx.afterRender(focusAfterRedraw(button));
    ctx.navigate(`/projects/${seg(ctx.project.name)}/webhooks`, { webhook: webhook.id });
  } catch (err) {
    toast(err.message, "error");
  }
}

async function sendTest(ctx, base, webhook, button) {
  try {
    const queued = await api.post(`${base}/${webhook.id}/test`);
    toast("Test event queued: it is sent within a few seconds, ahead of anything waiting");
    // Follow it for a while: it is attempted once, and its outcome is told and logged.
    let found = null;
    for (let i = 0; i < 20 && !ctx.stale(); i++) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      const log = await api.get(`${base}/${webhook.id}/deliveries${query({ per_page: 20 })}`);
      found = log.items.find((d) => d.id === queued.id) || null;
      if (!found || found.state !== "pending") break;
    }
    if (ctx.stale()) return;
    const answer = found?.attempt_log[0];
    if (found?.state === "delivered") toast(`Test event delivered: the endpoint answered ${answer.status_code}`);
    else if (found?.state === "failed") toast(`Test event not accepted: ${answer.error}. Tests are not retried: send another once the endpoint is fixed.`, "error");
    ctx.afterRender(focusAfterRedraw(button));
    ctx.navigate(`/projects/${seg(ctx.project.name)}/webhooks`, { webhook: webhook.id });
  } catch (err) {
    toast(err.message, "error");
  }
}

async function setEnabled(ctx, base, webhook, enabled, button) {
  try {
    await api.patch(`${base}/${webhook.id}`, { enabled });
    toast(`Webhook ${enabled ? "enabled" : "disabled"}`);
    ctx.afterRender(focusAfterRedraw(button));
    ctx.refresh();
  } catch (err) {
    toast(err.message, "error");
  }
}

/** The page's Add webhook button: where the focus goes when the last webhook is deleted. */
const addButton = () => [...document.querySelectorAll("main .page-head button")].find((b) => b.textContent === "Add webhook");

async function deleteWebhook(ctx, base, webhook, button) {
  const focus = focusAfterRedraw(button, addButton);
  const done = await confirmDialog({
    title: "Delete webhook",
    body: h("p", {}, "Delete the webhook to ", h("code", { class: "address" }, wrappingAddress(webhook.url)), " with its delivery log? Events queued for it are not sent."),
    action: () => api.delete(`${base}/${webhook.id}`),
  });
  if (done) {
    toast("Webhook deleted");
    ctx.afterRender(focus);
    ctx.navigate(`/projects/${seg(ctx.project.name)}/webhooks`);
  }
}

async function createWebhook(ctx, base) {
  const created = await webhookDialog(base, {
    title: "Add webhook",
    submitLabel: "Add",
    save: (fields, sign) => api.post(base, { ...fields, sign }),
  });
  if (!created) return;
  if (created.secret) await showSecret("Webhook added", created.url, created.secret);
  ctx.afterRender(focusAfterRedraw(null, () => rowControl("Webhooks", created.id)));
  ctx.navigate(`/projects/${seg(ctx.project.name)}/webhooks`, { webhook: created.id });
}

async function editWebhook(ctx, base, webhook, button) {
  const saved = await webhookDialog(base, {
    title: "Edit webhook",
    submitLabel: "Save",
    webhook,
    save: (fields) => api.patch(`${base}/${webhook.id}`, fields),
  });
  if (!saved) return;
  toast("Webhook saved");
  ctx.afterRender(focusAfterRedraw(button));
  ctx.navigate(`/projects/${seg(ctx.project.name)}/webhooks`, { webhook: saved.id });
}

/** The endpoint's URL, events and description, for a new webhook (with whether to sign) or
 * one to change (`webhook`); `save(fields, sign)` sends them, its answer closes the dialog. */
async function webhookDialog(base, { title, submitLabel, webhook = null, save }) {
  const types = await api.get(`${base}/event-types`);
  const subscribed = new Set(webhook?.event_types || []);
  return openDialog({
    title,
    // Wide: each event's description then fits beside it, and the dialog on a laptop's screen.
    wide: true,
    build(close) {
      const url = h("input", { type: "url", required: true, autocomplete: "off", spellcheck: false, value: webhook?.url || "" });
      const urlField = field("Endpoint URL", url, "An HTTPS (or HTTP) URL that events are POSTed to. Its host must have public addresses unless the server allows private ones.");
      const boxes = types.map((t) => h("label", {}, h("input", { type: "checkbox", value: t.type, checked: subscribed.has(t.type) }), h("span", {}, t.type), h("span", { class: "hint" }, t.description)));
      const events = h("fieldset", { class: "radios" }, h("legend", {}, "Events (none ticked: every event)"), boxes);
      // Signing is chosen when it is added; later, New secret (or Add secret) changes it.
      const sign = h("input", { type: "checkbox", checked: true });
      const signField = webhook ? null : h("fieldset", { class: "radios" }, h("legend", {}, "Signature"), h("label", {}, sign, h("span", {}, "Sign deliveries with a new secret (shown once)")));
      const description = h("input", { type: "text", autocomplete: "off", value: webhook?.description || "" });
      const descriptionField = field("Description (optional)", description);
      const problem = h("div");
      const form = h(
        "form",
        {},
        h("div", { class: "dialog-body" }, urlField, events, signField, descriptionField, problem),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, submitLabel)),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        try {
          const chosen = [...events.querySelectorAll("input:checked")].map((i) => i.value);
          close(await save({ url: url.value.trim(), event_types: chosen, description: description.value }, sign.checked));
        } catch (err) {
          // A refused URL (also one another webhook of the project has: 409) is told at the
          // URL; errorBox then leaves it out.
          urlField.setError(err.forField?.("url"));
          descriptionField.setError(err.forField?.("description"));
          clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
}

async function newSecret(ctx, base, webhook, button) {
  let secret = null;
  const done = await confirmDialog({
    title: webhook.signed ? "New signing secret" : "Sign deliveries",
    confirmLabel: webhook.signed ? "Replace the secret" : "Make a secret",
    danger: webhook.signed,
    body: h(
      "p",
      {},
      webhook.signed
        ? ["Deliveries to ", h("code", { class: "address" }, wrappingAddress(webhook.url)), " are signed with a new secret from now on: the endpoint must be given it, as signatures under the current one stop."]
        : ["Deliveries to ", h("code", { class: "address" }, wrappingAddress(webhook.url)), " are signed from now on, with a new secret the endpoint must be given."],
    ),
    action: async () => {
      secret = (await api.post(`${base}/${webhook.id}/secret`)).secret;
    },
  });
  if (!done) return;
  await showSecret("New signing secret", webhook.url, secret);
  ctx.afterRender(focusAfterRedraw(button));
  ctx.navigate(`/projects/${seg(ctx.project.name)}/webhooks`, { webhook: webhook.id });
}

function showSecret(title, url, secret) {
  return openDialog({
    title,
    wide: true,
    build(close) {
      return h(
        "div",
        {},
        h(
          "div",
          { class: "dialog-body" },
          h("p", {}, "Deliveries to ", h("code", { class: "address" }, wrappingAddress(url)), " carry X-Berth-Signature: sha256= and the HMAC-SHA256 of the body under this secret."),
          h("div", { class: "alert caution", role: "note" }, h("strong", {}, "The secret is shown only now."), " Give it to the endpoint: it cannot be shown again."),
          h("h3", {}, "Signing secret"),
          copyable(secret, { name: "Copy signing secret", testid: "new-webhook-secret" }),
        ),
        h("footer", {}, h("button", { type: "button", class: "primary", onclick: () => close() }, "Done")),
      );
    },
  });
}
