// The signed-in user's own account: changing the password.

import { api } from "../api.js";
import { clear, errorBox, field, h, openDialog, toast } from "../ui.js";

const MIN_PASSWORD = 8;

/** Password and repeat fields; `check()` returns the password, or null after marking why. */
export function newPasswordFields(label = "New password") {
  const password = h("input", { type: "password", required: true, minLength: MIN_PASSWORD, autocomplete: "new-password" });
  const repeat = h("input", { type: "password", required: true, autocomplete: "new-password" });
  const passwordField = field(label, password, `At least ${MIN_PASSWORD} characters.`);
  const repeatField = field("Repeat the password", repeat);
  return {
    fields: [passwordField, repeatField],
    setError: (message) => passwordField.setError(message),
    /** Off: not required, not sent, and not checked by the browser (as when hidden). */
    setEnabled(on) {
      password.disabled = !on;
      repeat.disabled = !on;
    },
    check() {
      passwordField.setError("");
      repeatField.setError("");
      if (password.value.length < MIN_PASSWORD) {
        passwordField.setError(`The password needs at least ${MIN_PASSWORD} characters.`);
        return null;
      }
      if (password.value !== repeat.value) {
        repeatField.setError("The two passwords differ.");
        return null;
      }
      return password.value;
    },
  };
}

export function changePasswordDialog() {
  return openDialog({
    title: "Change your password",
    build(close) {
      const current = h("input", { type: "password", required: true, autocomplete: "current-password" });
      const currentField = field("Current password", current);
      const next = newPasswordFields();
      const problem = h("div");
      const form = h(
        "form",
        {},
        h("div", { class: "dialog-body" }, currentField, next.fields, problem),
        h("footer", {}, h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button", { type: "submit", class: "primary" }, "Change password")),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        clear(problem);
        currentField.setError("");
        const password = next.check();
        if (password === null) return;
        try {
          await api.put("/account/password", { current_password: current.value, new_password: password });
          close(true);
          toast("Password changed; your other console sessions were signed out");
        } catch (err) {
          const wrong = err.forField?.("current_password");
          if (wrong) currentField.setError(wrong);
          else {
            next.setError(err.forField?.("new_password"));
            clear(problem, errorBox(err));
          }
        }
      });
      return form;
    },
  });
}
