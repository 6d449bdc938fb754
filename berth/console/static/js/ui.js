// Small DOM helpers: elements built from data (never from HTML strings), dialogs, toasts,
// tables, copy buttons and the formats every screen shares.

/**
 * h("button", {class: "primary", onclick: fn}, "Save") -> <button class="primary">Save</button>
 * Props: `class`, `text`, `dataset`, `on<event>` handlers, booleans, everything else an
 * attribute. Children: nodes, strings, numbers, arrays of them; null/false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else if (!svg && key in el && typeof el[key] !== "object") el[key] = value;
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces `el`'s children. A "Loading…" box (class `loading`: muted, padded) filled this
 * way is loaded: it loses the class, or what it shows would be greyed out. */
export function clear(el, ...children) {
  el.replaceChildren();
  el.classList.remove("loading");
  return append(el, children);
}

// ------------------------------------------------------------------ formats

const UNITS = ["B", "kB", "MB", "GB", "TB", "PB"];

/** Bytes in decimal units (a GB is 10^9 bytes, as traffic is priced). */
export function bytes(n) {
  if (n === null || n === undefined) return "–";
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  // Three significant digits of the value as rounded: 999,999 B is 1.00 MB (not 1000 kB), and
  // 99,999 B 100 kB (not 100.0 kB).
  const digitsOf = (v) => (unit === 0 || Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2);
  let rounded = Number(value.toFixed(digitsOf(value)));
  if (Math.abs(rounded) >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
    rounded = Number(value.toFixed(digitsOf(value)));
  }
  return `${value.toFixed(digitsOf(rounded))} ${UNITS[unit]}`;
}

export function number(n) {
  return Number(n).toLocaleString("en-US");
}

const pad = (n) => String(n).padStart(2, "0");

// Made once: building a formatter costs far more than using one, and every time shown uses it.
const zoneFormat = new Intl.DateTimeFormat("en-US", { timeZoneName: "short" });

/** The browser's zone at that moment, as `UTC`, `GMT+9` or `PST`. */
function zoneName(d) {
  const part = zoneFormat.formatToParts(d).find((p) => p.type === "timeZoneName");
  return part ? part.value : "";
}

/** `2026-11-27 16:05 GMT+9`, in the browser's time zone: the one format of every time shown. */
export function datetime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())} ${zoneName(d)}`.trimEnd();
}

/** The time, its day and its clock each kept on one line: a narrow column (a table as wide
 * as the page) breaks it between the two, never inside either. */
export function timeElement(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  const text = datetime(iso);
  const split = text.indexOf(" ");
  return h("time", { datetime: iso, title: new Date(iso).toString() }, h("span", {}, text.slice(0, split)), " ", h("span", {}, text.slice(split + 1)));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

export function shortDigest(digest) {
  if (!digest) return "–";
  const [algorithm, hex] = digest.split(":");
  return `${algorithm}:${hex.slice(0, 12)}`;
}

const DIGEST_IN_TEXT = /\bsha(?:256|384|512):[a-f0-9]{64,128}\b/g;

/** A text that may name digests (an audit target, `app@sha256:…`) with each shortened to
 * `sha256:0123456789ab…`: a whole digest is wider than a phone. Give the whole text a title. */
export function shortenDigests(text) {
  return text.replace(DIGEST_IN_TEXT, (digest) => `${shortDigest(digest)}…`);
}

// Where an address may end a line: after a slash (the two of `//` together) or an `=`, before a
// `?`, `&`, `#`, `@` or `.`. Chromium breaks a URL nowhere but after `?` and hyphens, so a narrow
// column broke it inside a word (`.../T024BE7LD/B` | `08K3Q2L1RX/...`).
const ADDRESS_BREAKS = /(?<=[/=])(?!\/)|(?=[?&#@.])/;

/** A text naming an address or an image (a webhook URL, `repository/image@sha256:…`) that
 * wraps at its separators (a `<wbr>` at each), never inside a word unless a word alone is
 * wider than its column. The text is unchanged: what is copied is the whole. */
export function wrappingAddress(text) {
  return text.split(ADDRESS_BREAKS).flatMap((part, i) => (i ? [h("wbr"), part] : [part]));
}

/** A JSON value as text that wraps where a reader would: after a comma, between fields and
 * items, or between a string's words. JSON.stringify's has no such place (its quotes and
 * commas are glued), so a narrow column broke it anywhere, a name or a digest mid-way. Each
 * name stays with its value (`json-name`, kept on one line); the text is still the JSON. */
export function wrappingJson(value) {
  // A line may also end after an opening bracket: a list's first item need not fit beside
  // the name of its field.
  const enclosed = (open, parts, close) => (parts.length ? [open, h("wbr"), ...parts.flatMap((part, i) => (i ? [", ", part] : [part])), close] : [open, close]);
  if (Array.isArray(value)) return enclosed("[", value.map(wrappingJson), "]");
  if (value && typeof value === "object") {
    const fields = Object.entries(value).map(([name, item]) => [h("span", { class: "json-name" }, `${JSON.stringify(name)}: `), wrappingJson(item)]);
    return enclosed("{", fields, "}");
  }
  return [JSON.stringify(value)];
}

/** An address from data (an advisory's reference) as a link only when it is http(s): any
 * other scheme (`javascript:`, `data:`) would run or open in the console's origin, so it is
 * shown as text. `text` is what the link says (the address when absent). */
export function webLink(address, text = address) {
  let url = null;
  try {
    url = new URL(address);
  } catch (err) {
    // not an absolute URL: shown as text
  }
  if (url && (url.protocol === "https:" || url.protocol === "http:")) {
    return h("a", { href: url.href, target: "_blank", rel: "noopener noreferrer" }, text);
  }
  return h("span", { title: address }, text);
}

export function plural(n, word, many = word + "s") {
  return `${number(n)} ${n === 1 ? word : many}`;
}

/** A setting's interval in seconds as said: `30 minutes`, `1 hour`, `90 seconds`. */
export function every(seconds) {
  if (seconds === 0) return "0 seconds";
  if (seconds % 3600 === 0) return plural(seconds / 3600, "hour");
  if (seconds % 60 === 0) return plural(seconds / 60, "minute");
  return plural(seconds, "second");
}

// ------------------------------------------------------------------ feedback

export function toast(message, kind = "info") {
  const region = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}` }, message);
  region.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/** An error where it happened, each message once: the API's detail, or (when it named
 * fields) the field messages not already shown at their fields (`err.forField`); null when
 * every one is. */
export function errorBox(err) {
  const named = err.fieldErrors || [];
  const lines = named.length
    ? [...new Set(named.filter((e) => !e.shownAtField).map((e) => (e.field ? `${e.field}: ${e.message}` : e.message)))]
    : [err.message || String(err)];
  if (!lines.length) return null;
  return h(
    "div",
    { class: "alert error", role: "alert" },
    lines.length === 1 ? h("strong", {}, lines[0]) : h("ul", {}, lines.map((line) => h("li", {}, line))),
  );
}

/** A search the server refused (a control character or line break pasted in): its rule and the
 * character, in its words, where the results would be, the search box left to correct it. */
export function searchRefusal(err) {
  const message = err.fieldErrors?.[0]?.message || err.message;
  return h("div", { class: "alert error", role: "alert" }, h("strong", {}, message));
}

export function emptyState(title, ...body) {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, title), ...body);
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

// ------------------------------------------------------------------ copy

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) {
      // fall through to the selection way (permissions differ between browsers)
    }
  }
  const area = h("textarea", { class: "offscreen", readOnly: true }, text);
  document.body.append(area);
  area.select();
  const done = document.execCommand("copy");
  area.remove();
  return done;
}

/** A button that copies `text`. `name` says what it copies for a screen reader ("Copy
 * secret access key", "Copy pull command of v1"), never the text itself: a secret read out
 * again, or a long command, is no help. It starts with the button's visible `label`. */
export function copyButton(text, name, label = "Copy") {
  const button = h("button", { type: "button", class: "small", "aria-label": name }, label);
  button.addEventListener("click", async () => {
    const done = await copyText(typeof text === "function" ? text() : text);
    button.textContent = done ? "Copied" : "Select and copy";
    setTimeout(() => (button.textContent = label), 1500);
  });
  return button;
}

/** A read-only command or value with a copy button named `name` (see copyButton). */
export function copyable(text, { name, label = "Copy", testid = null }) {
  return h(
    "div",
    { class: "copyable" },
    h("code", { "data-testid": testid }, text),
    copyButton(text, name, label),
  );
}

// ------------------------------------------------------------------ files

/** Has the browser save `blob` (a file the API gave) as `filename`. */
export function saveFile(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoked once the download has the data (at once, some browsers would lose it).
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ------------------------------------------------------------------ dialogs

/**
 * A modal <dialog> (focus kept inside, Esc closes). `build(close)` returns its body; the
 * returned promise resolves with what `close(value)` was called with (undefined on Esc, or
 * when the page changes under it: Back, a link, a new URL typed).
 */
export function openDialog({ title, build, wide = false, label = null }) {
  return new Promise((resolve) => {
    let result;
    let finished = false;
    const dialog = h("dialog", { class: wide ? "wide" : "", "aria-label": label || title });
    // Out of the page at once: the "close" event comes a task later, and until then a closed
    // dialog (a secret shown only once, say) would still be in the document.
    const finish = () => {
      if (finished) return;
      finished = true;
      window.removeEventListener("hashchange", leave);
      dialog.remove();
      resolve(result);
    };
    const close = (value) => {
      result = value;
      dialog.close();
      finish();
    };
    const leave = () => close(undefined);
    window.addEventListener("hashchange", leave);
    dialog.addEventListener("close", finish); // Esc closes it without `close`
    append(dialog, [
      h(
        "header",
        {},
        h("h2", {}, title),
        h("button", { type: "button", class: "icon", "aria-label": "Close", onclick: () => close(undefined) }, "×"),
      ),
      build(close),
    ]);
    document.body.append(dialog);
    dialog.showModal();
  });
}

/**
 * Asks before something that cannot be undone. With `phrase`, the confirm button stays
 * disabled until the user types it. `action` runs on confirm; its error stays in the dialog.
 * Resolves true once confirmed (and done), false or undefined when cancelled. With `refusal`
 * (an error met before asking: what the confirmation would say could not be read), the dialog
 * shows it and offers only Cancel.
 */
export function confirmDialog({ title, body, confirmLabel = "Delete", phrase = null, danger = true, action, refusal = null }) {
  return openDialog({
    title,
    build(close) {
      const problem = h("div", {}, refusal ? errorBox(refusal) : null);
      const confirm = refusal ? null : h("button", { type: "submit", class: danger ? "danger" : "primary", disabled: !!phrase }, confirmLabel);
      const typed = phrase
        ? h("input", {
            type: "text",
            autocomplete: "off",
            spellcheck: false,
            "aria-label": `Type ${phrase} to confirm`,
            placeholder: phrase,
            oninput: (e) => (confirm.disabled = e.target.value.trim() !== phrase),
          })
        : null;
      const form = h(
        "form",
        { method: "dialog" },
        h("div", { class: "dialog-body" }, body, phrase ? h("label", { class: "field" }, h("span", {}, ["To confirm, type ", h("strong", {}, phrase)]), typed) : null, problem),
        h(
          "footer",
          {},
          h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
          confirm,
        ),
      );
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!confirm || confirm.disabled) return;
        confirm.disabled = true;
        try {
          if (action) await action();
          close(true);
        } catch (err) {
          clear(problem, errorBox(err));
          confirm.disabled = false;
        }
      });
      return form;
    },
  });
}

// ------------------------------------------------------------------ focus

/**
 * Where the focus goes when the page is drawn again after `control` acted: a keyboard user
 * would otherwise be left on <body>, at the top of the page. For a button in a table row, it
 * goes to that control again when its row still has it (Disable is now Enable), else to the
 * same control of the next row, else of a row before it (the row was removed: the list closes
 * up). A control in no row (a form's Save, the button that opened a dialog) is found again by
 * its kind and name, in a form of the same name. Else it goes to `fallback()` (the control that
 * adds one, when none are left; the only choice when `control` is null), else to <main>. Taken
 * while the control is still there; the function it returns moves the focus once the page is
 * drawn again, unless the focus has been put somewhere since.
 */
export function focusAfterRedraw(control, fallback = () => null) {
  const row = control?.closest("tr[data-key]");
  const cell = control?.closest("td");
  const column = cell?.cellIndex;
  const caption = row?.closest("table").querySelector("caption")?.textContent;
  const index = cell ? [...cell.querySelectorAll("button")].indexOf(control) : -1;
  const rows = row ? [...row.parentElement.children] : [];
  const at = rows.indexOf(row);
  // The row itself, then the rows after it in order, then those before it, nearest first.
  const keys = row ? [row, ...rows.slice(at + 1), ...rows.slice(0, at).reverse()].map((r) => r.dataset.key) : [];
  const text = control?.textContent;
  const again = control && !row ? sameControl(control) : () => null;
  return () => {
    const current = document.activeElement;
    if (current && current !== document.body) return;
    const drawn = [...document.querySelectorAll("table")].find((t) => t.querySelector("caption")?.textContent === caption);
    const byKey = new Map(drawn ? [...drawn.tBodies[0].rows].map((r) => [r.dataset.key, r]) : []);
    for (const key of keys) {
      const same = byKey.get(key)?.cells[column];
      if (!same) continue;
      const buttons = [...same.querySelectorAll("button")];
      const target = [buttons.find((b) => b.textContent === text), buttons[index]].find((b) => b && !b.disabled);
      if (target) return target.focus();
    }
    const other = again() || fallback() || document.querySelector("main");
    if (other) other.focus();
  };
}

/** A function that finds `control` again in the page drawn anew: an enabled element of its
 * kind and name (aria-label, else text) in <main>, in a form of the same name (or in none). */
function sameControl(control) {
  const nameOf = (element) => element.getAttribute("aria-label") || element.textContent;
  const formOf = (element) => element.closest("form")?.getAttribute("aria-label") ?? null;
  const [tag, name, form] = [control.tagName.toLowerCase(), nameOf(control), formOf(control)];
  return () => [...document.querySelectorAll(`main ${tag}`)].find((e) => nameOf(e) === name && formOf(e) === form && !e.disabled) || null;
}

/** The first control (link, button, field) of the row keyed `key` in the table captioned
 * `caption`, as drawn now: where the focus goes once a row is added. */
export function rowControl(caption, key) {
  const drawn = [...document.querySelectorAll("table")].find((t) => t.querySelector("caption")?.textContent === caption);
  const row = drawn && [...drawn.tBodies[0].rows].find((r) => r.dataset.key === String(key));
  return row ? [...row.querySelectorAll("a[href], button, select, input, textarea")].find((c) => !c.disabled) || null : null;
}

// ------------------------------------------------------------------ tables and paging

// A table wider than its box is shown as cards (each row a card, each cell a line under or
// beside its column's name: style.css `.stacked`) instead of scrolling sideways, where its last
// columns go out of sight at tablet and small laptop widths; on a phone it always is. Decided
// when the box or the table changes size (a window resized, a cell's content changed); cards
// go back to a table only once the box is wider than when they were made, so that the cards'
// own size never undoes them.
const PHONE = window.matchMedia("(max-width: 760px)");
const stackedAt = new WeakMap();
const fitting = new ResizeObserver((entries) => new Set(entries.map((e) => e.target.closest(".table-wrap"))).forEach(fitTable));

function fitTable(wrap) {
  const width = wrap.clientWidth;
  if (wrap.classList.contains("stacked")) {
    if (width <= stackedAt.get(wrap)) return;
    wrap.classList.remove("stacked");
  }
  if (PHONE.matches || wrap.scrollWidth > width) {
    wrap.classList.add("stacked");
    stackedAt.set(wrap, width);
  }
}

/** The box of a table (`content`): a table as long as it fits, cards when it does not. */
export function tableWrap(...content) {
  const wrap = h("div", { class: "table-wrap" }, content);
  fitting.observe(wrap);
  const inner = wrap.querySelector("table");
  if (inner) fitting.observe(inner);
  return wrap;
}

/**
 * columns: [{title, cell: (row) => node|string, class?}]; an empty list shows `empty`.
 */
export function table(columns, rows, { empty = "Nothing here yet.", caption = null, rowKey = null } = {}) {
  if (!rows.length) return typeof empty === "string" ? emptyState(empty) : empty;
  return tableWrap(
    h(
      "table",
      {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class || "" }, c.title)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            { dataset: rowKey ? { key: rowKey(row) } : undefined },
            columns.map((c) => h("td", { class: c.class || "", "data-label": c.title }, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** A page past a paged listing's last (its last item deleted, or an old link): `show(last)`
 * is asked for the last page that has items (page 1 when none has) and this returns true, for
 * the caller to draw nothing of the empty page. A page in the address is shown in the empty
 * one's place in the history (navigate's `replace`: Back would come to it and be sent on
 * again). A page that is empty though the total says it should not be (items deleted in
 * between) is drawn, with its pager: asking again could go on for ever. */
export function leftPastLastPage({ items, page, per_page: perPage, total }, show) {
  const last = Math.max(1, Math.ceil(total / perPage));
  if (items.length || last >= page) return false;
  show(last);
  return true;
}

/** Previous and Next through a paged listing (`GET` answers' `page`, `per_page`, `total`);
 * `label` names it apart from another pager on the same page. */
export function pager({ page, per_page: perPage, total }, go, label = "Pages") {
  if (total <= perPage) return null;
  const first = (page - 1) * perPage + 1;
  const last = Math.min(total, page * perPage);
  return h(
    "nav",
    { class: "pager", "aria-label": label },
    h("span", {}, `${number(first)}–${number(last)} of ${number(total)}`),
    h("button", { type: "button", class: "small", disabled: page <= 1, onclick: () => go(page - 1) }, "Previous"),
    h("button", { type: "button", class: "small", disabled: last >= total, onclick: () => go(page + 1) }, "Next"),
  );
}

// ------------------------------------------------------------------ forms

/** A labelled field with room for its error (`field.setError(message)`); `control` is what
 * is shown when it is not the input itself (a textarea with its counter). */
export function field(label, input, hint = null, control = input) {
  const error = h("span", { class: "field-error", role: "alert" });
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  const hintEl = hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", `${id}-hint`);
  const wrap = h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl, error);
  wrap.setError = (message) => {
    error.textContent = message || "";
    input.toggleAttribute("aria-invalid", !!message);
  };
  return wrap;
}

/** Radio buttons as one labelled group; `.value` reads the choice. */
export function radios(name, legend, options, value) {
  const group = h(
    "fieldset",
    { class: "radios" },
    h("legend", {}, legend),
    options.map(([optionValue, label, hint]) =>
      h(
        "label",
        {},
        h("input", { type: "radio", name, value: optionValue, checked: optionValue === value }),
        h("span", {}, label),
        hint ? h("span", { class: "hint" }, hint) : null,
      ),
    ),
  );
  Object.defineProperty(group, "value", {
    get: () => group.querySelector("input:checked")?.value,
  });
  return group;
}

/** Characters as the server counts them (Python's len: code points, an emoji is one). */
export function characters(text) {
  return [...text].length;
}

/** A textarea with a live `n/max` counter in characters. No maxLength: the browser's counts
 * UTF-16 units (an emoji is two) and would cut a text the server accepts; the form checks. */
export function countedText(max, value = "", props = {}) {
  const area = h("textarea", { rows: 2, ...props }, value);
  const counter = h("span", { class: "counter", "aria-live": "polite" }, `${characters(value)}/${max}`);
  area.addEventListener("input", () => (counter.textContent = `${characters(area.value)}/${max}`));
  const wrap = h("div", { class: "counted" }, area, counter);
  wrap.area = area;
  return wrap;
}
