/* crystalforge design report: the sortable table of top candidates and the 3D view of the selected one.
 *
 * Reads the page's JSON block #cf-data ({structures: {cid: {formula, lattice, atoms}}, first: cid}),
 * draws with the inlined 3Dmol.js, and exposes its state as window.crystalforgeReport
 * ({viewer, shown, atoms, error}) so tests can check what was drawn. Fetches nothing.
 */
(function () {
  "use strict";

  var state = { viewer: null, shown: null, atoms: 0, error: null, sorted: null };
  window.crystalforgeReport = state;
  var dataNode = document.getElementById("cf-data");
  var data = dataNode ? JSON.parse(dataNode.textContent) : { structures: {}, first: null };
  var table = document.getElementById("cf-top");
  var viewerNode = document.getElementById("cf-viewer");
  var caption = document.getElementById("cf-viewer-caption");
  var legend = document.getElementById("cf-legend");

  // ---- sorting -------------------------------------------------------------------------------
  function cellValue(row, index) {
    var cell = row.cells[index];
    return cell ? cell.getAttribute("data-v") || "" : "";
  }

  function compare(a, b) {
    var x = Number(a), y = Number(b);
    if (!isNaN(x) && !isNaN(y)) { return x - y; }
    return a.localeCompare(b, undefined, { numeric: true });
  }

  function sortBy(header) {
    var headers = header.parentNode.children;
    var index = Array.prototype.indexOf.call(headers, header);
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = cellValue(r1, index), b = cellValue(r2, index);
      if (a === "" || b === "") { return (a === "" ? 1 : 0) - (b === "" ? 1 : 0); }  // missing last, both ways
      var order = compare(a, b);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    state.sorted = { column: header.getAttribute("data-key"), ascending: ascending };
  }

  // ---- the 3D view ---------------------------------------------------------------------------
  function message(text) {
    viewerNode.innerHTML = "";
    var p = document.createElement("p");
    p.className = "message";
    p.textContent = text;
    viewerNode.appendChild(p);
  }

  function makeViewer() {
    if (typeof $3Dmol === "undefined") {
      state.error = "the 3D viewer script did not load";
      return null;
    }
    try {
      var viewer = $3Dmol.createViewer(viewerNode, { backgroundColor: "white", antialias: true });
      if (!viewer) { state.error = "WebGL is not available in this browser"; }
      return viewer || null;
    } catch (err) {
      state.error = "WebGL is not available in this browser (" + err + ")";
      return null;
    }
  }

  function hexColour(symbol) {
    var table = $3Dmol.elementColors && $3Dmol.elementColors.Jmol;
    var value = table && table[symbol] !== undefined ? table[symbol] : 0xff1493;
    return "#" + ("000000" + value.toString(16)).slice(-6);
  }

  function cellCorner(lattice, i, j, k) {
    return {
      x: i * lattice[0][0] + j * lattice[1][0] + k * lattice[2][0],
      y: i * lattice[0][1] + j * lattice[1][1] + k * lattice[2][1],
      z: i * lattice[0][2] + j * lattice[1][2] + k * lattice[2][2]
    };
  }

  function drawCell(viewer, lattice) {
    var edges = [
      [[0, 0, 0], [1, 0, 0]], [[0, 0, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 1]],
      [[1, 0, 0], [1, 1, 0]], [[1, 0, 0], [1, 0, 1]], [[0, 1, 0], [1, 1, 0]],
      [[0, 1, 0], [0, 1, 1]], [[0, 0, 1], [1, 0, 1]], [[0, 0, 1], [0, 1, 1]],
      [[1, 1, 0], [1, 1, 1]], [[1, 0, 1], [1, 1, 1]], [[0, 1, 1], [1, 1, 1]]
    ];
    edges.forEach(function (edge) {
      viewer.addCylinder({
        start: cellCorner(lattice, edge[0][0], edge[0][1], edge[0][2]),
        end: cellCorner(lattice, edge[1][0], edge[1][1], edge[1][2]),
        radius: 0.035, color: "#444444", fromCap: 1, toCap: 1
      });
    });
  }

  function showLegend(structure) {
    legend.innerHTML = "";
    var seen = {};
    structure.atoms.forEach(function (atom) {
      if (seen[atom[0]]) { return; }
      seen[atom[0]] = true;
      var span = document.createElement("span");
      var dot = document.createElement("i");
      dot.style.background = hexColour(atom[0]);
      span.appendChild(dot);
      span.appendChild(document.createTextNode(atom[0]));
      legend.appendChild(span);
    });
  }

  function select(cid) {
    Array.prototype.forEach.call(table ? table.tBodies[0].rows : [], function (row) {
      row.classList.toggle("selected", row.getAttribute("data-cid") === cid);
    });
    var structure = data.structures[cid];
    if (!structure) {
      caption.textContent = cid + ": no structure stored";
      return;
    }
    if (!state.viewer && !state.error) { state.viewer = makeViewer(); }
    if (!state.viewer) {
      message("3D view unavailable: " + state.error + ".");
      return;
    }
    var viewer = state.viewer;
    viewer.clear();
    var model = viewer.addModel();
    model.addAtoms(structure.atoms.map(function (a) { return { elem: a[0], x: a[1], y: a[2], z: a[3] }; }));
    viewer.setStyle({}, { sphere: { scale: 0.35, colorscheme: "Jmol" } });
    drawCell(viewer, structure.lattice);
    viewer.zoomTo();
    viewer.render();
    state.shown = cid;
    state.atoms = model.selectedAtoms({}).length;
    caption.textContent = cid + " \u00b7 " + structure.formula + " \u00b7 " + state.atoms +
      " atoms drawn (unit cell; atoms on faces shown on each face) \u00b7 drag to rotate, scroll to zoom";
    showLegend(structure);
  }

  // ---- wiring --------------------------------------------------------------------------------
  if (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header) {
      header.addEventListener("click", function () { sortBy(header); });
    });
    table.tBodies[0].addEventListener("click", function (event) {
      if (event.target.closest("a")) { return; }  // a CIF download, not a selection
      var row = event.target.closest("tr");
      if (row) { select(row.getAttribute("data-cid")); }
    });
    table.tBodies[0].addEventListener("keydown", function (event) {
      var row = event.target.closest("tr");
      if (row && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        select(row.getAttribute("data-cid"));
      }
    });
  }
  if (viewerNode && data.first) { select(data.first); }
}());
