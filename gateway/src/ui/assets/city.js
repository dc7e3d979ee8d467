// The city view kept live (/ui/): each `availability` event of the public stream updates its
// place on the map, then (at most twice a second) the totals and the busiest and emptiest
// places. Written for this page alone: no library, nothing fetched but the stream.
(function () {
  "use strict";
  var places = {};
  document.querySelectorAll("#map circle").forEach(function (c) {
    places[c.id.slice(2)] = c;
  });
  var KEYS = ["total", "free", "occupied", "unknown"];
  function n(c, key) {
    return parseInt(c.getAttribute("data-" + key), 10) || 0;
  }
  function taken(c) {
    var known = n(c, "free") + n(c, "occupied");
    return known > 0 ? n(c, "occupied") / known : null;
  }
  function colour(t) {
    if (t === null) return "#aab7b8";
    return "hsl(" + Math.round(130 * (1 - Math.min(1, Math.max(0, t)))) + ",70%,45%)";
  }
  function totals() {
    var sums = { total: 0, free: 0, occupied: 0, unknown: 0 };
    Object.keys(places).forEach(function (id) {
      KEYS.forEach(function (key) { sums[key] += n(places[id], key); });
    });
    KEYS.forEach(function (key) {
      document.getElementById(key).textContent = String(sums[key]);
    });
  }
  function list(id, ranked) {
    var ol = document.getElementById(id);
    while (ol.firstChild) ol.removeChild(ol.firstChild);
    ranked.forEach(function (r) {
      var li = document.createElement("li");
      li.setAttribute("data-lot", r.id);
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = r.circle.getAttribute("data-name");
      var pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = Math.round(r.taken * 100) + "%";
      li.appendChild(name);
      li.appendChild(document.createTextNode(" "));
      li.appendChild(pct);
      ol.appendChild(li);
    });
  }
  function rank() {
    var size = document.getElementById("busiest").children.length || 8;
    var ranked = [];
    Object.keys(places).forEach(function (id) {
      var t = taken(places[id]);
      if (t !== null) ranked.push({ id: id, taken: t, circle: places[id] });
    });
    ranked.sort(function (a, b) {
      return b.taken - a.taken || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    });
    list("busiest", ranked.slice(0, size));
    list("emptiest", ranked.slice(-size).reverse());
  }
  var due = null;
  function later() {
    if (due !== null) return;
    due = setTimeout(function () { due = null; totals(); rank(); }, 500);
  }
  var source = new EventSource("/v1/availability/stream");
  source.addEventListener("availability", function (event) {
    var a;
    try { a = JSON.parse(event.data); } catch (_) { return; }
    var c = places[a.lot];
    if (!c) return;
    KEYS.forEach(function (key) { c.setAttribute("data-" + key, String(a[key])); });
    c.setAttribute("fill", colour(taken(c)));
    var title = c.querySelector("title");
    if (title) {
      title.textContent = c.getAttribute("data-name") + " · " + a.free + " / " + a.total;
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    later();
  });
})();
