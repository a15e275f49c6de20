// Small DOM and formatting helpers shared by the dashboard's modules.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const escapeXml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
export const percent = (progress) => Math.round(Math.max(0, Math.min(1, progress || 0)) * 100);

export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function clock(ts) {
  const d = new Date(ts);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** Set an element's text only when it changed (no needless layout). */
export function setText(node, text) {
  const value = String(text ?? "");
  if (node.textContent !== value) node.textContent = value;
}

/** Set (or, for null/false, remove) data attributes and other attributes only when changed. */
export function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else {
      const text = value === true ? "" : String(value);
      if (node.getAttribute(name) !== text) node.setAttribute(name, text);
    }
  }
}

export function badge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

export function updateBadge(node, status) {
  setText(node, status);
  const cls = `badge s-${status}`;
  if (node.className !== cls) node.className = cls;
}

/** Keyed children of `container`: one view per id, kept (not rebuilt) while its id stays, in
 * the order given, so a button under the pointer survives the re-renders a stream causes. */
export class KeyedList {
  constructor(container, make) {
    this.container = container;
    this.make = make; // id -> view with `root` and `update(item, ctx)`
    this.views = new Map();
  }

  render(items, idOf, ctx) {
    const wanted = new Set();
    let index = 0;
    for (const item of items) {
      const id = idOf(item);
      wanted.add(id);
      let view = this.views.get(id);
      if (!view) this.views.set(id, (view = this.make(id)));
      view.update(item, ctx);
      const there = this.container.children[index];
      if (there !== view.root) this.container.insertBefore(view.root, there || null);
      index += 1;
    }
    for (const [id, view] of this.views) {
      if (!wanted.has(id)) {
        view.root.remove();
        this.views.delete(id);
      }
    }
  }
}
