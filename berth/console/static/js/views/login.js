import { signIn } from "../api.js";
import { clear, field, h } from "../ui.js";

export function loginView(root, ctx) {
  const user = h("input", { type: "text", name: "user", autocomplete: "username", required: true, autofocus: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const problem = h("div", { class: "alert error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary wide" }, "Sign in");
  const form = h(
    "form",
    { class: "login-card", "aria-labelledby": "login-title" },
    h("div", { class: "login-brand" }, h("img", { src: "favicon.svg", alt: "", width: 40, height: 40 }), h("span", {}, "Berth")),
    h("h1", { id: "login-title" }, "Sign in to the console"),
    field("User name", user),
    field("Password", password),
    problem,
    submit,
    h("p", { class: "hint" }, "docker, podman and Kubernetes sign in with an access key, created here after you sign in."),
    // Anyone reads this page: it names the settings the command needs, never their values here.
    h("p", { class: "hint" }, "Forgot your password? A server administrator sets a new one. A lost administrator password is set on the server with ", h("code", {}, "berth user set-password admin"), ", given the settings ", h("code", {}, "berth serve"), " has: its data directory (", h("code", {}, "berth --data-dir DIR user set-password admin"), ", or BERTH_DATA_DIR), BERTH_DATABASE_URL and config file. ", h("code", {}, "berth serve"), " prints the command with them when it starts."),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    problem.hidden = true;
    submit.disabled = true;
    submit.textContent = "Signing in…";
    try {
      const session = await signIn(user.value.trim(), password.value);
      ctx.signedIn(session);
    } catch (err) {
      problem.hidden = false;
      problem.textContent = err.status === 401 ? "Wrong user name or password." : err.message;
      password.select();
    } finally {
      submit.disabled = false;
      submit.textContent = "Sign in";
    }
  });
  clear(root, h("main", { id: "main", class: "login-page" }, form));
  user.focus();
}
