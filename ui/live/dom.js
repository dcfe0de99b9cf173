// PagedChat live view: the DOM helpers every view uses.
(function (root) {
  "use strict";

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function setText(node, text) { // an unchanged text costs no layout
    if (node.textContent !== text) node.textContent = text;
  }

  // a button that does `onClick`
  function button(cls, label, onClick) {
    const b = el("button", cls, label);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  // a grid of titled chart canvases: {element, canvases: {key: canvas}} from [[key, title], ...]
  function chartGrid(specs) {
    const element = el("div", "pc-charts");
    const canvases = {};
    for (const [key, title] of specs) {
      const box = el("div", "pc-chart");
      const c = el("canvas");
      box.append(el("div", "pc-title", title), c);
      element.appendChild(box);
      canvases[key] = c;
    }
    return {element, canvases};
  }

  root.PagedChatDom = {el, setText, button, chartGrid};
})(typeof window !== "undefined" ? window : globalThis);
