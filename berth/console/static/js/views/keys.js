import { api, seg } from "../api.js";
import { dockerLogin, loginAddress, pullSecret, sharedAddress } from "../registry.js";
import { badge, clear, confirmDialog, copyable, datetime, emptyState, errorBox, field, focusAfterRedraw, h, openDialog, table, timeElement, toast } from "../ui.js";

/** A key's expiry in UTC, as it was chosen: a date works through the end of that day (UTC),
 * as `berth key create --expires DATE` does; a time given to the CLI is shown to the minute.
 * The title has it in the browser's time zone. */
function expiryElement(iso) {
  const utc = new Date(iso).toISOString(); // 2026-12-04T23:59:59.000Z
  const [day, time] = [utc.slice(0, 10), utc.slice(11, 19)];
  const text = time === "23:59:59" ? `the end of ${day} UTC` : `${day} ${time.slice(0, 5)} UTC`;
  return h("time", { datetime: iso, title: `${datetime(iso)} in your time zone` }, text);
}

export async function keysView(main, ctx) {
  const { project, session } = ctx;
  const base = `/projects/${seg(project.name)}/keys`;
  const admin = project.role === "admin" || project.server_admin;
  document.title = `Access keys · ${project.name} · Berth`;
  const body = h("div", { class: "loading" }, "Loading access keys…");
  clear(
    main,
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        {},
        h("h1", {}, "Access keys"),
        h("p", { class: "muted" }, "docker, podman, containerd and Kubernetes sign in to ", h("code", {}, loginAddress(project)), " with an access key ID and its secret access key. ", admin ? "You see every key in the project." : "These are your keys in this project."),
      ),
      h("button", { type: "button", class: "primary", onclick: (e) => createKey(ctx, base, e.currentTarget) }, "Create access key"),
    ),
    body,
  );
  const keys = await api.get(base);
  if (ctx.stale()) return;
  const mine = (k) => k.user === session.user;
  clear(
    body,
    table(
      [
        { title: "Access key ID", cell: (k) => h("code", {}, k.access_key_id) },
        admin ? { title: "User", cell: (k) => k.user } : null,
        { title: "Created", cell: (k) => timeElement(k.created_at) },
        { title: "Last used", cell: (k) => (k.last_used_at ? timeElement(k.last_used_at) : h("span", { class: "muted" }, "never")) },
        { title: "Expires", cell: (k) => (k.expires_at ? expiryElement(k.expires_at) : h("span", { class: "muted" }, "never")) },
        { title: "State", cell: (k) => badge({ active: "Active", disabled: "Disabled", expired: "Expired" }[k.state], k.state) },
        {
          title: "Actions",
          cell: (k) =>
            admin || mine(k)
              ? h(
                  "span",
                  { class: "actions" },
                  k.state === "disabled"
                    ? h("button", { type: "button", class: "small", "aria-label": `Enable key ${k.access_key_id}`, onclick: (e) => setState(ctx, base, k, "enable", e.currentTarget) }, "Enable")
                    : h("button", { type: "button", class: "small", "aria-label": `Disable key ${k.access_key_id}`, onclick: (e) => setState(ctx, base, k, "disable", e.currentTarget) }, "Disable"),
                  h("button", { type: "button", class: "small danger-text", "aria-label": `Delete key ${k.access_key_id}`, onclick: (e) => deleteKey(ctx, base, k, e.currentTarget) }, "Delete"),
                )
              : null,
        },
      ].filter(Boolean),
      keys,
      {
        caption: "Access keys",
        rowKey: (k) => k.access_key_id,
        empty: emptyState("No access keys yet", h("p", {}, "Create one to sign in with docker login or to make a Kubernetes pull secret.")),
      },
    ),
  );
}

async function setState(ctx, base, key, action, button) {
  try {
    await api.post(`${base}/${seg(key.access_key_id)}/${action}`);
    toast(`Access key ${key.access_key_id} ${action}d`);
    ctx.afterRender(focusAfterRedraw(button));
    ctx.refresh();
  } catch (err) {
    toast(err.message, "error");
  }
}

/** The page's Create access key button: where the focus goes when the last key is deleted. */
const createButton = () => [...document.querySelectorAll("main .page-head button")].find((b) => b.textContent === "Create access key");

async function deleteKey(ctx, base, key, button) {
  const focus = focusAfterRedraw(button, createButton);
  const done = await confirmDialog({
    title: "Delete access key",
    body: h("p", {}, "Delete ", h("code", {}, key.access_key_id), "? Every client signed in with it stops working."),
    action: () => api.delete(`${base}/${seg(key.access_key_id)}`),
  });
  if (done) {
    toast(`Access key ${key.access_key_id} deleted`);
    ctx.afterRender(focus);
    ctx.refresh();
  }
}

async function createKey(ctx, base, button) {
  const created = await openDialog({
    title: "Create access key",
    build(close) {
      const admin = ctx.project.role === "admin" || ctx.project.server_admin;
      const owner = h("input", { type: "text", autocomplete: "off", spellcheck: false, placeholder: ctx.session.user });
      // What the API allows (berth.access.policy.key_creation_refusal): server administrators
      // make anyone's keys, project admins those of service accounts.
      const whom = ctx.project.server_admin
        ? "Leave empty for your own key, or name any user with a role in this project (repository roles too), or a server administrator."
        : "Leave empty for your own key, or name a service account with a role in this project (for CI): people make their own.";
      const ownerField = admin ? field("For (optional)", owner, whom) : null;
      const expires = h("input", { type: "date", min: new Date(Date.now() + 86400000).toISOString().slice(0, 10) });
      const expiresField = field("Expires (optional)", expires, "The key works through the end of that day (23:59:59 UTC). Leave empty for a key that does not expire. At most 2 keys per user per project.");
      const problem = h("div");
      const form = h(
        "form",
        {},
        h("div", { class: "dialog-body" }, h("p", {}, `A new access key in project ${ctx.project.name}.`), ownerField, expiresField, problem),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Create")),
      );
      // An error answers the input it was given: it goes once that changes or is sent again.
      const clearErrors = () => {
        clear(problem);
        expiresField.setError(null);
        ownerField?.setError(null);
      };
      form.addEventListener("input", clearErrors);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clearErrors();
        try {
          const body = { expires_at: expires.value ? `${expires.value}T23:59:59Z` : null };
          if (owner.value.trim()) body.user = owner.value.trim();
          close(await api.post(base, body));
        } catch (err) {
          expiresField.setError(err.forField?.("expires_at"));
          ownerField?.setError(err.forField?.("user"));
          clear(problem, errorBox(err));
        }
      });
      return form;
    },
  });
  if (!created) return;
  await showSecret(ctx, created);
  // Back on Create access key, as the dialog left it, once the list shows the new key.
  ctx.afterRender(focusAfterRedraw(button));
  ctx.refresh();
}

function showSecret(ctx, key) {
  const { project } = ctx;
  return openDialog({
    title: "Access key created",
    wide: true,
    label: "Access key created",
    build(close) {
      return h(
        "div",
        {},
        h(
          "div",
          { class: "dialog-body" },
          h("p", {}, "A new access key of ", h("strong", { "data-testid": "new-key-user" }, key.user), " in project ", h("strong", {}, project.name), key.expires_at ? [", until ", expiryElement(key.expires_at)] : null, "."),
          h("div", { class: "alert caution", role: "note" }, h("strong", {}, "The secret access key is shown only now."), " Copy it and keep it safe: it cannot be shown again. If it is lost, delete this key and create another."),
          h("h3", {}, "Access key ID"),
          copyable(key.access_key_id, { name: "Copy access key ID", testid: "new-key-id" }),
          h("h3", {}, "Secret access key"),
          copyable(key.secret_access_key, { name: "Copy secret access key", testid: "new-key-secret" }),
          h("h3", {}, "Sign in with docker"),
          copyable(dockerLogin(project, key.access_key_id, key.secret_access_key), { name: "Copy docker login command", testid: "docker-login-command" }),
          sharedAddress(project)
            ? h(
                "p",
                { class: "hint", "data-testid": "one-login-per-host" },
                "Every project shares this address and docker keeps one login per address, so a login with another project's key replaces this one: use a separate ",
                h("code", {}, "DOCKER_CONFIG"),
                " (podman, skopeo: ",
                h("code", {}, "--authfile"),
                ") for each project.",
              )
            : null,
          h("h3", {}, "Kubernetes pull secret"),
          copyable(pullSecret(project, key.access_key_id, key.secret_access_key), { name: "Copy Kubernetes pull secret command", testid: "pull-secret-command" }),
          h("p", { class: "hint" }, "Then list the secret under imagePullSecrets in the pod spec."),
        ),
        h("footer", {}, h("button", { type: "button", class: "primary", onclick: () => close() }, "Done")),
      );
    },
  });
}
