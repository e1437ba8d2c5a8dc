// The Review page: a run's results, filtered and paged on the server (studio/review.py);
// only the shown page's previews are fetched.
let results = null, facets = null, page = 0, total = 0;
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

async function detail(item) {
  $("detail").hidden = false;
  $("detail-title").textContent = item;
  let answer;
  try { answer = await api(`/api/results/item?results_uri=${encodeURIComponent(results)}&item_id=${encodeURIComponent(item)}`); }
  catch (error) { $("detail-record").textContent = error.message; return; }
  $("detail-preview").src = answer.row.preview_uri ? fileUrl(item, "preview_uri") : "";
  const row = answer.row;
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
  } catch (error) { $("send-result").textContent = `not sent: ${error.message}`; }
}

$("open").onclick = () => open(false);
$("reload").onclick = () => open(true);
$("apply").onclick = () => { page = 0; show(); };
$("prev").onclick = () => { if (page > 0) { page--; show(); } };
$("next").onclick = () => { if ((page + 1) * perPage < total) { page++; show(); } };
$("send-back").onclick = () => sendBack("command");
$("launch").onclick = () => sendBack("deployment");

(async () => {
  const settings = await api("/api/settings");
  $("model").textContent = `model: ${settings.model}`;
  $("launch").hidden = !settings.prefect;
  const fromUrl = new URLSearchParams(location.search).get("results");
  if (fromUrl || settings.results) { $("results-uri").value = fromUrl || settings.results; open(false); }
})();
