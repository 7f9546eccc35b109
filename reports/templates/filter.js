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
  var scale = document.getElementById("f-scale");
  var count = document.getElementById("f-count");
  var tables = Array.prototype.slice.call(document.querySelectorAll("details.example-table"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.ex"));
  var texts = rows.map(function (r) { return (r.textContent || "").toLowerCase(); });
  function apply() {
    var q = search.value.trim().toLowerCase();
    var shown = 0;
    var total = 0;
    tables.forEach(function (t) {
      // the chosen scale's table of each adapter, or every adapter's table at the scale picked
      var on = scale.value === "" ? t.dataset.chosen === "1" : t.dataset.scale === scale.value;
      t.hidden = !on;
      if (on && scale.value !== "") { t.open = true; }
    });
    rows.forEach(function (r, i) {
      var table = r.closest("details.example-table");
      var ok = (!failed.checked || r.dataset.failed === "1") &&
               (!changed.checked || r.dataset.changed === "1") &&
               (category.value === "" || r.dataset.category === category.value) &&
               (q === "" || texts[i].indexOf(q) !== -1);
      r.hidden = !ok;
      if (table && !table.hidden) {
        total += 1;
        if (ok) { shown += 1; }
      }
    });
    count.textContent = shown + " of " + total + " rows shown";
  }
  [failed, changed, category, scale].forEach(function (el) { el.addEventListener("change", apply); });
  search.addEventListener("input", apply);
  apply();
})();
