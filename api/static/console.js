// tokentrail console: small enhancements over pages that work without JavaScript.
// Copy buttons, adding and removing scope rows without a round trip, the READ-only filter field,
// and the chain verification status fetched in place.
(function () {
  "use strict";

  function announce(text) {
    var live = document.getElementById("live");
    if (!live) return;
    live.textContent = "";
    window.setTimeout(function () { live.textContent = text; }, 50);
  }

  // -- copy ---------------------------------------------------------------------------------
  function copyWithTextarea(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    var done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    document.body.removeChild(area);
    return done;
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(
        function () { return true; },
        function () { return copyWithTextarea(text); }
      );
    }
    return Promise.resolve(copyWithTextarea(text));
  }

  function onCopy(button) {
    var label = button.querySelector(".copy-label") || button;
    var original = label.getAttribute("data-label") || label.textContent;
    label.setAttribute("data-label", original);
    copyText(button.getAttribute("data-value") || "").then(function (ok) {
      button.setAttribute("data-copied", ok ? "true" : "false");
      label.textContent = ok ? "Copied" : "Copy failed";
      announce(ok ? "Token value copied to the clipboard" : "Could not copy; your browser refused");
      window.setTimeout(function () { label.textContent = original; }, 2000);
    });
  }

  // -- scope rows ---------------------------------------------------------------------------
  function nextIndex(container) {
    var max = -1;
    container.querySelectorAll("input[name$='-kind']").forEach(function (input) {
      var match = /^r(\d+)-kind$/.exec(input.name);
      if (match) max = Math.max(max, parseInt(match[1], 10));
    });
    return max + 1;
  }

  function refreshEmpty(container) {
    var empty = document.querySelector("[data-empty-rows]");
    if (empty) empty.hidden = container.querySelector("[data-row]") !== null;
  }

  function addRow(kind) {
    var container = document.getElementById("resource-rows");
    var template = document.getElementById("row-template-" + kind);
    if (!container || !template) return false;
    var index = String(nextIndex(container));
    var html = template.innerHTML.replace(/__i__/g, index);
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var row = holder.firstElementChild;
    container.appendChild(row);
    refreshEmpty(container);
    var first = row.querySelector("input:not([type='hidden'])");
    if (first) first.focus();
    return true;
  }

  function removeRow(button) {
    var row = button.closest("[data-row]");
    var container = document.getElementById("resource-rows");
    if (!row || !container) return false;
    row.parentNode.removeChild(row);
    refreshEmpty(container);
    var add = document.querySelector("[data-add-row]");
    if (add) add.focus();
    announce("Scope removed; save to apply");
    return true;
  }

  function syncFilter(select) {
    var row = select.closest("[data-row]");
    var filter = row && row.querySelector("[data-filter]");
    if (filter) filter.disabled = select.value !== "READ";
  }

  // -- chain verification -------------------------------------------------------------------
  function verify(link) {
    var box = document.getElementById("chain-status");
    if (!box || !window.fetch) return false;
    box.innerHTML = "<p>Verifying…</p>";
    fetch(link.getAttribute("href") + "?partial=1", { credentials: "same-origin" })
      .then(function (response) { return response.text(); })
      .then(function (html) { box.innerHTML = html; })
      .catch(function () { window.location.href = link.getAttribute("href"); });
    return true;
  }

  // Filters start open on wide screens and folded on phones (unless some are in use).
  if (window.matchMedia && window.matchMedia("(min-width: 721px)").matches) {
    document.querySelectorAll("details[data-open-wide]").forEach(function (box) { box.open = true; });
  }

  document.addEventListener("click", function (event) {
    var target = event.target.closest("[data-copy], [data-add-row], [data-remove-row], [data-verify]");
    if (!target) return;
    if (target.hasAttribute("data-copy")) {
      onCopy(target);
    } else if (target.hasAttribute("data-add-row")) {
      if (addRow(target.getAttribute("data-add-row"))) event.preventDefault();
    } else if (target.hasAttribute("data-remove-row")) {
      if (removeRow(target)) event.preventDefault();
    } else if (target.hasAttribute("data-verify")) {
      if (verify(target)) event.preventDefault();
    }
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches("[data-permission]")) syncFilter(event.target);
  });

  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.classList && details.classList.contains("rename") && details.open) {
      var input = details.querySelector("input[name='name']");
      if (input) { input.focus(); input.select(); }
    }
  }, true);
})();
