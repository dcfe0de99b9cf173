// PagedChat live view: the two DOM helpers every view uses.
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

  root.PagedChatDom = {el, setText, button};
})(typeof window !== "undefined" ? window : globalThis);
