// The Review page: a run's results, filtered and paged on the server (studio/review.py);
// only the shown page's previews are fetched.
let results = null, facets = null, page = 0, total = 0, settings = {};
const perPage = 24;
const selected = new Set();

const fileUrl = (item, kind) =>
  `/api/results/file?results_uri=${encodeURIComponent(results)}&item_id=${encodeURIComponent(item)}&kind=${kind}`;
const number = (v) => (v === null || v === undefined || isNaN(v) ? "—" : Number(v).toFixed(3));

function query() {
  const statuses = [...document.querySelectorAll("#statuses input:checked")].map((c) => c.value);
  const q = { status: statuses, sort: $("sort").value, descending: $("descending").checked, page, per_page: perPage };
  if ($("flag").value) q.needs_review = $("flag").value === "true";
  if ($("drag-type").value) q.drag_type = $("drag-type").value;
  if ($("metric").value) {
    q.metric = $("metric").value;
    if ($("metric-min").value.trim()) q.min = Number($("metric-min").value);
    if ($("metric-max").value.trim()) q.max = Number($("metric-max").value);
  }
  return q;
}

async function open(reload) {
  results = $("results-uri").value.trim();
  try {
    facets = await api(`/api/results/facets?results_uri=${encodeURIComponent(results)}&reload=${!!reload}`);
  } catch (error) { $("facets").textContent = error.message; return; }
  $("facets").textContent = `${facets.rows} items: ` +
    Object.entries(facets.statuses).map(([s, n]) => `${n} ${s}`).join(", ") + `; ${facets.needs_review} need review`;
  $("statuses").replaceChildren(...Object.entries(facets.statuses).map(([s, n]) =>
    el("label", {}, el("input", { type: "checkbox", value: s }), ` ${s} (${n})`)));
  setOptions($("drag-type"), [["", "any"], ...facets.drag_types]);
  $("drag-types-note").textContent = facets.drag_types_note;
  setOptions($("metric"), [["", "—"], ...facets.metrics]);
  setOptions($("sort"), ["item_id", "status", "attempts", ...facets.metrics]);
  $("flag").value = facets.needs_review ? "true" : "";  // the flagged items first
  selected.clear(); page = 0;
  await show();
}

async function show() {
  let answer;
  try { answer = await api("/api/results/query", { results, query: query() }); }
  catch (error) { $("shown").textContent = error.message; return; }
  total = answer.total;
  $("shown").textContent = `${total} shown`;
  $("page-label").textContent = `page ${page + 1} of ${Math.max(1, Math.ceil(total / perPage))}`;
  $("grid").replaceChildren(...answer.rows.map(card));
}

// One item's card; every value from the results file goes in as text.
function card(row) {
  const metrics = Object.entries(row.metrics).filter(([, v]) => typeof v === "number").slice(0, 4)
    .map(([m, v]) => `${m} ${number(v)}`).join(" · ");
  const pick = el("input", { type: "checkbox", className: "pick", checked: selected.has(row.item_id),
    onchange: (e) => {
      e.target.checked ? selected.add(row.item_id) : selected.delete(row.item_id);
      $("selected-count").textContent = selected.size;
    } });
  const opener = el("a", { href: "#", className: "open-item", textContent: row.item_id,
    onclick: (e) => { e.preventDefault(); detail(row.item_id); } });
  return el("div", { className: "card" + (row.needs_review ? " flagged" : ""), dataset: { item: row.item_id } },
    el("label", {}, pick, " ", opener), " ",
    el("span", { className: `badge ${String(row.status).replace(/[^a-z]/g, "")}`, textContent: row.status }), " ",
    el("span", { className: "muted", textContent: `attempts ${row.attempts}` }),
    row.has.preview_uri && el("img", { loading: "lazy", src: fileUrl(row.item_id, "preview_uri"), alt: "" }),
    el("div", { className: "muted", textContent: `${row.drag_types.join(", ")} ${metrics}` }),
    row.needs_review && el("div", { className: "finding warning", textContent: `needs review: ${row.review_reasons}` }),
    row.error && el("div", { className: "finding error", textContent: row.error }));
}

function keyValues(table, entries) {
  table.replaceChildren();
  entries.forEach(([k, v]) => {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
  });
}

// The preview strip is input | instruction | edited, each panel w wide with a gap of
// max(2, floor(w / 64)) px between them (dragnext/preview.py): its width gives w back.
function panelWidth(stripWidth) {
  for (let w = Math.floor(stripWidth / 3); w > 0; w--) {
    if (3 * w + 2 * Math.max(2, Math.floor(w / 64)) === stripWidth) return w;
  }
  return null;
}

// The big before/after: the strip's first and last panels, at their full size.
function compare(item, hasPreview) {
  const before = $("before"), after = $("after");
  [before, after].forEach((c) => { c.width = c.height = 0; });
  $("compare-note").textContent = hasPreview ? "" : "no preview: the item has no edit to compare";
  if (!hasPreview) return;
  const strip = new Image(), token = (compare.token = (compare.token || 0) + 1);
  strip.onerror = () => { if (token === compare.token) $("compare-note").textContent = "the preview cannot be shown"; };
  strip.onload = () => {
    if (token !== compare.token) return;  // another item was opened meanwhile
    const w = panelWidth(strip.naturalWidth);
    if (!w) { $("compare-note").textContent = "the preview is not an input | instruction | edited strip"; return; }
    const gap = Math.max(2, Math.floor(w / 64)), h = strip.naturalHeight;
    [[before, 0], [after, 2 * (w + gap)]].forEach(([canvas, x]) => {
      canvas.width = w; canvas.height = h;
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(strip, x, 0, w, h, 0, 0, w, h);
    });
    $("compare").dataset.ready = "true";
  };
  $("compare").dataset.ready = "false";
  strip.src = fileUrl(item, "preview_uri");
}

function setView(view) {
  $("compare").dataset.view = view;
  $("side-by-side").classList.toggle("on", view === "side");
  $("slider").classList.toggle("on", view === "slider");
  $("compare-at").hidden = view !== "slider";
  slide();
}

function slide() {
  const at = $("compare").dataset.view === "slider" ? Number($("compare-at").value) : 0;
  $("after").parentElement.style.clipPath = at ? `inset(0 0 0 ${at}%)` : "";
}

async function detail(item) {
  $("detail").hidden = false;
  $("review").classList.add("with-detail");
  $("detail-title").textContent = item;
  $("detail").scrollTop = 0;
  let answer;
  try { answer = await api(`/api/results/item?results_uri=${encodeURIComponent(results)}&item_id=${encodeURIComponent(item)}`); }
  catch (error) { $("detail-record").textContent = error.message; return; }
  const row = answer.row;
  compare(item, Boolean(row.preview_uri));
  keyValues($("detail-row"), ["status", "error", "attempts", "needs_review", "review_reasons", "device",
    "config_hash", "image_uri", "metrics"].map((k) => [k, row[k]]));
  keyValues($("detail-timings"), Object.entries(row.timings_s || {}).map(([k, v]) => [k, `${number(v)} s`]));
  $("detail-record").textContent = JSON.stringify(answer.record, null, 1);
}

async function sendBack(launch) {
  try {
    const overrides = $("overrides").value.trim() ? JSON.parse($("overrides").value) : {};
    const answer = await api("/api/results/send-back", { results, items: [...selected], overrides, launch });
    $("send-result").textContent = `wrote ${answer.selection_uri} (${answer.items} items)\n${answer.command}` +
      (answer.flow_run ? `\nlaunched flow run ${answer.flow_run.name} (${answer.flow_run.id})` : "");
    const link = $("launched-run");
    link.hidden = !(answer.flow_run && settings.prefect_ui);
    if (!link.hidden) {
      link.href = `${settings.prefect_ui}/runs/flow-run/${encodeURIComponent(answer.flow_run.id)}`;
      link.textContent = `open ${answer.flow_run.name} in the Prefect UI`;
    }
  } catch (error) {
    $("send-result").textContent = `not sent: ${error.message}`;
    $("launched-run").hidden = true;
  }
}

$("open").onclick = () => open(false);
$("reload").onclick = () => open(true);
$("apply").onclick = () => { page = 0; show(); };
$("prev").onclick = () => { if (page > 0) { page--; show(); } };
$("next").onclick = () => { if ((page + 1) * perPage < total) { page++; show(); } };
$("send-back").onclick = () => sendBack("command");
$("launch").onclick = () => sendBack("deployment");
$("side-by-side").onclick = () => setView("side");
$("slider").onclick = () => setView("slider");
$("compare-at").oninput = slide;
const closeDetail = () => { $("detail").hidden = true; $("review").classList.remove("with-detail"); };
$("close-detail").onclick = closeDetail;
window.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });

(async () => {
  settings = await api("/api/settings");
  $("model").textContent = `model: ${settings.model}`;
  $("launch").hidden = !settings.prefect;
  const fromUrl = new URLSearchParams(location.search).get("results");
  if (fromUrl || settings.results) { $("results-uri").value = fromUrl || settings.results; open(false); }
})();
