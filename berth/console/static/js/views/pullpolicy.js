// Vulnerable images (a section of the Policies page): the project's pull policy, which refuses
// pulls of images whose scan found vulnerabilities at or above a severity. Project admins
// change it; others see it.

import { api, seg } from "../api.js";
import { clear, errorBox, field, focusAfterRedraw, h, toast } from "../ui.js";

const CHOICES = [
  ["", "Off: pulls are not checked against scans"],
  ["critical", "Critical findings"],
  ["high", "High or critical findings"],
  ["medium", "Medium or more severe findings"],
  ["low", "Low or more severe findings"],
  ["unknown", "Any finding (also those without a severity)"],
];

export async function pullPolicySection(section, ctx) {
  const { project } = ctx;
  const base = `/projects/${seg(project.name)}/pull-policy`;
  const canEdit = project.role === "admin" || project.server_admin;
  const body = h("div", { class: "loading" }, "Loading the pull policy…");
  clear(
    section,
    h("h2", { id: "pull-policy" }, "Vulnerable images"),
    h(
      "p",
      { class: "muted" },
      "Refuse pulls (docker, podman, skopeo, Kubernetes) of images whose scan found vulnerabilities of the chosen severity or above; the client is told how many and where to see them. Images not scanned yet, being scanned, or whose scan failed are let through. An image index is refused when it or one of its platforms is.",
    ),
    body,
  );
  const policy = await api.get(base);
  if (ctx.stale()) return;
  const current = CHOICES.find(([value]) => value === (policy.refuse_severity || ""));
  if (!canEdit) {
    clear(body, h("p", {}, h("strong", {}, "Refuse pulls of images with: "), current[1], ". ", h("span", { class: "muted" }, "Project admins change it.")));
    return;
  }
  const select = h(
    "select",
    {},
    CHOICES.map(([value, label]) => h("option", { value, selected: value === current[0] }, label)),
  );
  const choice = field("Refuse pulls of images with", select);
  const problem = h("div");
  const save = h("button", { type: "submit", class: "primary" }, "Save");
  const form = h("form", { class: "inline-form", "aria-label": "Pull policy" }, choice, save, problem);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(problem);
    try {
      const saved = await api.put(base, { refuse_severity: select.value || null });
      toast(saved.refuse_severity ? "Pulls of vulnerable images are refused" : "Pull policy turned off");
      ctx.afterRender(focusAfterRedraw(save));
      ctx.refresh();
    } catch (err) {
      choice.setError(err.forField?.("refuse_severity"));
      clear(problem, errorBox(err));
    }
  });
  clear(body, form);
}
