// Filters of the per-example tables. Allowed by its sha256 in the page's CSP; it reads no data but
// the rows' data-* attributes and text, and only toggles `hidden` (no markup is ever written).
(function () {
  "use strict";
  var bar = document.getElementById("example-filters");
  if (!bar) { return; }
  var failed = document.getElementById("f-failed");
  var changed = document.getElementById("f-changed");
  var category = document.getElementById("f-category");
  var search = document.getElementById("f-search");
  var count = document.getElementById("f-count");
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.ex"));
  var texts = rows.map(function (r) { return (r.textContent || "").toLowerCase(); });
  function apply() {
    var q = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (r, i) {
      var ok = (!failed.checked || r.dataset.failed === "1") &&
               (!changed.checked || r.dataset.changed === "1") &&
               (category.value === "" || r.dataset.category === category.value) &&
               (q === "" || texts[i].indexOf(q) !== -1);
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " rows shown";
  }
  [failed, changed, category].forEach(function (el) { el.addEventListener("change", apply); });
  search.addEventListener("input", apply);
  apply();
})();
