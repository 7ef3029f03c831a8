// Keyboard work in the queue: j and k move between rows, Enter opens the selected referral.
// Not needed for anything: every link and form works without it.
(function () {
  "use strict";
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("table.queue tbody tr a[href]")); }
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.altKey || event.ctrlKey || event.metaKey) { return; }
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) { return; }
    if (event.key !== "j" && event.key !== "k") { return; }
    var links = rows();
    if (!links.length) { return; }
    var at = links.indexOf(document.activeElement);
    var next = event.key === "j" ? Math.min(at + 1, links.length - 1) : Math.max(at - 1, 0);
    links[next].focus();
    event.preventDefault();
  });
})();
