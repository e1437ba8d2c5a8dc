// The Author page: what a person draws becomes an AuthorState (studio/state.py); the server
// checks it and answers the instant preview after every change.
const emptyRegion = () => ({ polygons: [], strokes: [], rle: null });
const COLOURS = ["#ff5050", "#50a0ff", "#50dc78", "#fac83c", "#c864ff"];
let state = null;            // AuthorState
let size = null;             // [width, height] of the image
let fit = 1;                 // canvas px per image px at zoom 1 (the longer side 512 px)
let zoom = 1;
let scale = 1;               // canvas px per image px: fit × zoom
const MAX_ZOOM = 8;           // the canvas stays within 4096 px a side
let maxBrushRadius = 256;     // image px (the server's bound, from /api/settings)
const HIT_PX = 7;            // how near, in screen px, a click takes hold of a point
let history = [], future = [];  // undo and redo: the state as JSON after each change
const MAX_HISTORY = 200;
let held = null;             // the point being moved: { point, moved }
let suppressClick = false;   // the click that ends moving a point places nothing
let panning = null;          // a middle-button or Pan-tool drag: where it started
let hover = null;            // the pointer, in image px (the brush's outline)
let picture = new Image();
let active = -1;             // the drag being drawn
let mode = "polygon";
let pending = [];            // the polygon being drawn
let stroke = null;           // the brush stroke being drawn
let boxStart = null, boxEnd = null;
let checkTimer = null;
let currentJob = null;       // the last Edit now's id

function setMode(m) {
  mode = m;
  document.querySelectorAll("#tools button").forEach((b) => b.classList.toggle("on", b.dataset.mode === m));
  $("canvas").style.cursor = m === "pan" ? "grab" : "crosshair";
  draw();
}

function regionInUse() {
  if ($("region-for").value === "editable") return state.editable;
  return active >= 0 ? state.drags[active].region : null;
}

function resize() {
  scale = fit * zoom;
  $("canvas").width = Math.round(size[0] * scale);
  $("canvas").height = Math.round(size[1] * scale);
  $("zoom-label").textContent = `${Math.round(zoom * 100)}%`;
  draw();
}

// Zoom about a point of the canvas's view (the pointer, or the view's centre), which stays put.
function setZoom(next, clientX, clientY) {
  if (!size) return;
  const wrap = $("canvas-wrap"), box = wrap.getBoundingClientRect();
  const vx = (clientX ?? box.left + box.width / 2) - box.left, vy = (clientY ?? box.top + box.height / 2) - box.top;
  const ix = (wrap.scrollLeft + vx) / scale, iy = (wrap.scrollTop + vy) / scale;
  zoom = Math.min(MAX_ZOOM, Math.max(1, next));
  resize();
  wrap.scrollLeft = ix * scale - vx;
  wrap.scrollTop = iy * scale - vy;
}

function loaded(image_id, width, height, newState) {
  size = [width, height];
  fit = 512 / Math.max(width, height);
  zoom = 1;
  resize();
  state = newState || { image_id, item_id: $("item-id").value || "item", prompt: $("prompt").value,
                        editable: emptyRegion(), drags: [] };
  $("item-id").value = state.item_id;
  $("prompt").value = state.prompt;
  active = state.drags.length - 1;
  pending = [];
  history = [JSON.stringify(state)]; future = [];
  picture = new Image();
  picture.onload = () => { draw(); changed(); };
  picture.src = `/api/images/${image_id}`;
  renderDrags();
}

function toImage(event) {
  const x = event.offsetX / scale - 0.5, y = event.offsetY / scale - 0.5;
  return [Math.min(size[0] - 1, Math.max(0, Math.round(x * 10) / 10)),
          Math.min(size[1] - 1, Math.max(0, Math.round(y * 10) / 10))];
}
const toCanvas = (p) => [(p[0] + 0.5) * scale, (p[1] + 0.5) * scale];

function drawPolygon(ctx, points, colour, closed) {
  if (!points.length) return;
  ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((p, i) => { const [x, y] = toCanvas(p); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
  if (closed) ctx.closePath();
  ctx.stroke();
  points.forEach((p) => { const [x, y] = toCanvas(p); ctx.fillStyle = colour; ctx.fillRect(x - 2, y - 2, 4, 4); });
}

function drawPoint(ctx, p, colour, label) {
  if (!p) return;
  const [x, y] = toCanvas(p);
  ctx.fillStyle = colour; ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
  ctx.fillStyle = "#fff"; ctx.font = "11px sans-serif"; ctx.fillText(label, x + 7, y - 7);
}

// COCO's compressed RLE (what the segmenter and a manifest row's masks come as): run
// lengths, column-major, starting with background.
function rleRuns(counts) {
  const runs = [];
  for (let p = 0; p < counts.length;) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = counts.charCodeAt(p++) - 48;
      x |= (c & 0x1f) << (5 * k++);
      more = (c & 0x20) !== 0;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

// A mask as a translucent picture in the image's pixels, cached on the RLE it came from.
const maskPictures = new WeakMap();
function maskPicture(rle, colour) {
  if (maskPictures.has(rle)) return maskPictures.get(rle);
  const [height, width] = rle.size, picture = document.createElement("canvas");
  picture.width = width; picture.height = height;
  const ctx = picture.getContext("2d"), pixels = ctx.createImageData(width, height);
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16));
  let index = 0;
  rleRuns(rle.counts).forEach((run, i) => {
    if (i % 2) for (let j = index; j < index + run; j++) {
      const at = ((j % height) * width + Math.floor(j / height)) * 4;
      pixels.data.set([r, g, b, 110], at);
    }
    index += run;
  });
  ctx.putImageData(pixels, 0, 0);
  maskPictures.set(rle, picture);
  return picture;
}

// Every part of a region as a translucent overlay: the segmented mask, the closed
// polygons and the brush strokes as the bands the server paints.
function drawRegion(ctx, region, colour) {
  if (region.rle) ctx.drawImage(maskPicture(region.rle, colour), 0, 0, $("canvas").width, $("canvas").height);
  ctx.fillStyle = colour + "55";
  region.polygons.forEach((p) => {
    ctx.beginPath();
    p.forEach((q, i) => { const [x, y] = toCanvas(q); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    ctx.closePath(); ctx.fill();
    drawPolygon(ctx, p, colour, true);
  });
  ctx.strokeStyle = colour + "88"; ctx.lineCap = "round"; ctx.lineJoin = "round";
  region.strokes.forEach((s) => {
    ctx.lineWidth = Math.max(1, 2 * s.radius * scale);
    ctx.beginPath();
    s.points.forEach((q, i) => { const [x, y] = toCanvas(q); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    if (s.points.length === 1) ctx.lineTo(...toCanvas(s.points[0]));
    ctx.stroke();
  });
  ctx.lineWidth = 2;
}

function draw() {
  const ctx = $("canvas").getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, $("canvas").width, $("canvas").height);
  if (!state) return;
  ctx.drawImage(picture, 0, 0, $("canvas").width, $("canvas").height);
  drawRegion(ctx, state.editable, "#ffffff");
  state.drags.forEach((d, i) => {
    const colour = COLOURS[i % COLOURS.length];
    drawRegion(ctx, d.region, colour);
    if (d.handle && d.target) {
      const [a, b] = [toCanvas(d.handle), toCanvas(d.target)];
      ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke();
    }
    drawPoint(ctx, d.handle, colour, `h${i}`);
    drawPoint(ctx, d.target, colour, `t${i}`);
    drawPoint(ctx, d.center, "#333", `c${i}`);
  });
  drawPolygon(ctx, pending, "#ffff00", false);
  if (mode === "brush" && hover) {
    const [x, y] = toCanvas(hover);
    ctx.strokeStyle = "#ffff00"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.arc(x, y, Number($("brush").value), 0, 2 * Math.PI); ctx.stroke();
  }
  if (boxStart && boxEnd) {
    const [a, b] = [toCanvas(boxStart), toCanvas(boxEnd)];
    ctx.strokeStyle = "#ffff00"; ctx.setLineDash([4, 3]); ctx.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    ctx.setLineDash([]);
  }
}

function renderDrags() {
  $("drags").replaceChildren(...(state ? state.drags : []).map((d, i) => {
    const type = el("select", { className: "type", onchange: (e) => {
      d.type = e.target.value; d.axis = d.type === "scale" ? d.axis : null;
      if (d.type === "translate") d.center = null;
      renderDrags(); changed();
    } });
    setOptions(type, ["translate", "deform", "rotate", "scale"], d.type);
    const axis = el("select", { className: "axis", hidden: d.type !== "scale",
      onchange: (e) => { d.axis = e.target.value === "uniform" ? null : e.target.value; changed(); } });
    setOptions(axis, ["uniform", "free"], d.axis || "uniform");
    return el("div", { className: "drag" + (i === active ? " active" : ""), dataset: { drag: i } },
      el("b", { style: { color: COLOURS[i % COLOURS.length] }, textContent: `drags[${i}]` }), " ", type, " ", axis,
      el("button", { className: "select", textContent: "Select", onclick: () => { active = i; renderDrags(); draw(); } }),
      el("button", { className: "remove", textContent: "Remove", onclick: () => {
        state.drags.splice(i, 1); active = state.drags.length - 1; renderDrags(); changed();
      } }),
      el("div", { className: "findings" }));
  }));
}

function showFindings(findings) {
  document.querySelectorAll("#drags .findings").forEach((f) => f.replaceChildren());
  $("item-findings").replaceChildren();
  findings.forEach((f) => {
    const line = document.createElement("div");
    line.className = `finding ${f.level}`;
    line.textContent = f.level === "error" ? `${f.field}: ${f.message}` : f.message;
    const slot = f.drag !== null && document.querySelector(`#drags [data-drag="${f.drag}"] .findings`);
    (slot || $("item-findings")).appendChild(line);
  });
}

// After every change: remember it for undo, redraw, and have the server check it.
function changed(remember = true) {
  draw();
  if (!state) return;
  state.item_id = $("item-id").value;
  state.prompt = $("prompt").value;
  const now = JSON.stringify(state);
  if (remember && now !== history[history.length - 1]) {
    history.push(now);
    if (history.length > MAX_HISTORY) history.shift();
    future = [];
  }
  undoable();
  clearTimeout(checkTimer);
  checkTimer = setTimeout(async () => {
    try {
      const started = performance.now();
      const answer = await api("/api/author/check", state);
      $("overlay").src = answer.overlay;
      $("warp").src = answer.warp;
      $("preview-time").textContent = `server ${(answer.seconds * 1000).toFixed(0)} ms, ` +
        `round trip ${(performance.now() - started).toFixed(0)} ms`;
      $("preview-time").dataset.ready = answer.ready;
      showFindings(answer.findings);
    } catch (error) { showFindings([{ level: "error", field: "request", message: error.message, drag: null }]); }
  }, 120);
}

function undoable() {
  $("undo").disabled = history.length < 2 && !pending.length;
  $("redo").disabled = !future.length;
}

function restore(json) {
  state = JSON.parse(json);
  $("item-id").value = state.item_id;
  $("prompt").value = state.prompt;
  active = Math.min(active, state.drags.length - 1);
  renderDrags(); changed();
}

// Undo takes back the last vertex of a polygon being drawn, then the changes one by one.
function undo() {
  if (pending.length) { pending.pop(); draw(); undoable(); return; }
  if (history.length < 2) return;
  future.push(history.pop());
  restore(history[history.length - 1]);
}

function redo() {
  if (!future.length) return;
  const next = future.pop();
  history.push(next);
  restore(next);
}

// The point under the pointer: a drag's handle, target or centre, or a vertex of a polygon
// of the region being marked (or of the one being drawn). The brush and the box paint and
// segment wherever they start: they take hold of nothing.
function pointAt(event) {
  if (!state || mode === "brush" || mode === "box") return null;
  const at = [event.offsetX, event.offsetY], near = (p) => {
    if (!p) return false;
    const [x, y] = toCanvas(p);
    return Math.hypot(x - at[0], y - at[1]) <= HIT_PX;
  };
  const region = regionInUse();
  const points = [...state.drags.flatMap((d) => [d.handle, d.target, d.center]),
                  ...(region ? region.polygons.flat() : []), ...pending];
  return points.find(near) || null;
}

function addDrag(type) {
  state.drags.push({ type, region: emptyRegion(), handle: null, target: null, center: null, axis: null });
  if (pending.length >= 3) {  // a polygon drawn before the drag existed is its handle region
    state.drags[state.drags.length - 1].region.polygons.push(pending);
    pending = [];
  }
  active = state.drags.length - 1;
  $("region-for").value = "drag";
  setMode("polygon");
  renderDrags(); changed();
}

function closePolygon() {
  const region = regionInUse();
  if (!region) {  // kept, not lost: it goes to the next drag added
    $("canvas-help").textContent = "Add a drag (or pick the editable mask) to put this polygon on";
    return;
  }
  if (pending.length >= 3) region.polygons.push(pending);
  pending = [];
  changed();
}

$("canvas").addEventListener("mousedown", (event) => {
  if (!state) return;
  suppressClick = false;
  if (event.button === 1 || mode === "pan") {
    const wrap = $("canvas-wrap");
    panning = { x: event.clientX, y: event.clientY, left: wrap.scrollLeft, top: wrap.scrollTop };
    event.preventDefault();
    return;
  }
  const point = pointAt(event);
  if (point) { held = { point, from: [event.offsetX, event.offsetY], moved: false }; return; }
  const p = toImage(event);
  if (mode === "brush" && regionInUse()) {
    // the brush is sized on the screen: a stroke's radius in image px depends on the zoom
    const radius = Math.min(maxBrushRadius, Math.max(0.5, Math.round(Number($("brush").value) / scale * 10) / 10));
    stroke = { points: [p], radius }; regionInUse().strokes.push(stroke); draw();
  } else if (mode === "box") { boxStart = p; boxEnd = p; }
});
$("canvas").addEventListener("mousemove", (event) => {
  if (!state) return;
  hover = toImage(event);
  if (panning) {
    $("canvas-wrap").scrollLeft = panning.left - (event.clientX - panning.x);
    $("canvas-wrap").scrollTop = panning.top - (event.clientY - panning.y);
    return;
  }
  if (held) {
    held.moved ||= Math.hypot(event.offsetX - held.from[0], event.offsetY - held.from[1]) > 2;
    if (held.moved) { [held.point[0], held.point[1]] = toImage(event); draw(); }
    return;
  }
  if (mode === "brush") draw();
  if (stroke) {
    const p = toImage(event), last = stroke.points[stroke.points.length - 1];
    if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= Math.max(1, stroke.radius / 3)) { stroke.points.push(p); draw(); }
  }
  if (boxStart) { boxEnd = toImage(event); draw(); }
});
$("canvas").addEventListener("mouseleave", () => { hover = null; draw(); });
window.addEventListener("mouseup", async () => {
  panning = null;
  if (held) {
    suppressClick = held.moved;
    if (held.moved) changed();
    held = null;
  }
  if (stroke) { stroke = null; changed(); }
  if (boxStart) {
    const box = [...boxStart, ...boxEnd], region = regionInUse(), asked = state;
    boxStart = boxEnd = null;
    if (!region) return;
    try {
      const answer = await api("/api/segment", { image_id: state.image_id, box });
      if (state !== asked) return;  // undone, redone or another image meanwhile: not this state's
      region.rle = answer.rle;
      $("canvas-help").textContent = `${answer.method}: ${answer.pixels} px`;
    } catch (error) { $("canvas-help").textContent = error.message; }
    changed();
  }
});
$("canvas").addEventListener("click", (event) => {
  if (!state || mode === "pan") return;
  if (suppressClick) { suppressClick = false; return; }
  const p = toImage(event), drag = state.drags[active];
  if (mode === "polygon") {
    const first = pending[0];
    if (first && pending.length >= 3 && Math.hypot(first[0] - p[0], first[1] - p[1]) * scale < 6) closePolygon();
    else { pending.push(p); draw(); undoable(); }
    return;
  }
  if (!drag) return;
  if (mode === "handle") { drag.handle = p; setMode("target"); }
  else if (mode === "target") { drag.target = p; if (drag.type === "rotate" || drag.type === "scale") setMode("center"); }
  else if (mode === "center") drag.center = p;
  changed();
});

document.querySelectorAll("#tools button").forEach((b) => (b.onclick = () => setMode(b.dataset.mode)));
$("close-polygon").onclick = closePolygon;
$("brush").oninput = () => { $("brush-label").textContent = $("brush").value; draw(); };
$("undo").onclick = undo;
$("redo").onclick = redo;
$("zoom-in").onclick = () => setZoom(zoom * 1.5);
$("zoom-out").onclick = () => setZoom(zoom / 1.5);
$("zoom-fit").onclick = () => setZoom(1);
$("canvas-wrap").addEventListener("wheel", (event) => {
  if (!(event.ctrlKey || event.metaKey)) return;  // a plain wheel scrolls (pans) the view
  event.preventDefault();
  setZoom(zoom * Math.exp(-Math.max(-200, Math.min(200, event.deltaY)) / 400), event.clientX, event.clientY);
}, { passive: false });
$("canvas").addEventListener("auxclick", (event) => event.preventDefault());
window.addEventListener("keydown", (event) => {
  if (event.target.closest("textarea, input[type=text], input:not([type])")) return;  // their own undo
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && key === "z") { event.preventDefault(); event.shiftKey ? redo() : undo(); }
  else if ((event.ctrlKey || event.metaKey) && key === "y") { event.preventDefault(); redo(); }
});
$("clear-region").onclick = () => {
  const region = regionInUse();
  if (region) Object.assign(region, emptyRegion());
  pending = []; changed();
};
$("add-drag").onclick = () => state && addDrag($("new-type").value);
// Typing is checked as it goes and remembered for undo once the field is left.
$("item-id").oninput = () => changed(false);
$("prompt").oninput = () => changed(false);
$("item-id").onchange = () => changed();
$("prompt").onchange = () => changed();

$("upload").onchange = () => {
  const file = $("upload").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = async () => {
    try {
      const answer = await api("/api/images", { data: reader.result, name: file.name });
      loaded(answer.image_id, answer.width, answer.height, null);
    } catch (error) { $("canvas-help").textContent = error.message; }
  };
  reader.readAsDataURL(file);
};
$("list-rows").onclick = async () => {
  try {
    const answer = await api(`/api/manifest/rows?manifest=${encodeURIComponent($("manifest-uri").value)}`);
    setOptions($("rows"), answer.items);
  } catch (error) { $("canvas-help").textContent = error.message; }
};
$("open-row").onclick = async () => {
  try {
    const answer = await api("/api/manifest/open", { manifest: $("manifest-uri").value, item_id: $("rows").value });
    loaded(answer.state.image_id, answer.width, answer.height, answer.state);
  } catch (error) { $("canvas-help").textContent = error.message; }
};

$("edit-now").onclick = async () => {
  $("sheet").hidden = true; $("record").hidden = true;
  let job;
  try { job = await api("/api/edit", { state }); } catch (error) { $("job-status").textContent = error.message; return; }
  currentJob = job.id;
  $("cancel-edit").hidden = false;
  const poll = async () => {
    try { job = await api(`/api/jobs/${job.id}`); } catch (error) { $("job-status").textContent = error.message; return; }
    $("job-status").textContent = `${job.status}${job.stage ? " · " + job.stage : ""} · ${job.elapsed_s} s`;
    $("job-status").dataset.status = job.status;
    $("stages").replaceChildren(...job.stages.map((s) => {
      const done = job.stages_done.includes(s), now = s === job.stage && !done;
      const value = done ? 1 : now && job.total ? job.done / job.total : 0;
      const skipped = job.status === "succeeded" && !done ? " (skipped)" : "";  // e.g. LoRA off
      return el("div", { className: "stage" }, el("span", { textContent: s + skipped }),
                el("progress", { max: 1, value }));
    }));
    const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
    if (finished && job.id === currentJob) $("cancel-edit").hidden = true;
    if (job.status === "succeeded") {
      $("sheet").src = `/api/jobs/${job.id}/sheet.png`; $("sheet").hidden = false;
      $("record").textContent = JSON.stringify({ timings_s: job.record.timings_s, unet_passes: job.record.unet_passes,
        device: job.record.device, lora: job.record.lora, item: job.record.item }, null, 1);
      $("record").hidden = false;
    } else if (job.status === "failed") $("job-status").textContent = `failed: ${job.error}`;
    else if (!finished) setTimeout(poll, 300);
  };
  poll();
};
$("cancel-edit").onclick = async () => {
  try { await api(`/api/jobs/${currentJob}/cancel`, {}); } catch (error) { $("job-status").textContent = error.message; }
};

$("append").onclick = async () => {
  try {
    const params = $("params").value.trim() ? JSON.parse($("params").value) : {};
    const answer = await api("/api/manifest/append", { state, manifest: $("target-manifest").value, params });
    $("append-result").dataset.rows = answer.rows;
    $("append-result").textContent = answer.problems.length ? `added; the manifest has ${answer.rows} rows and ` +
      `problems: ${answer.problems.join("; ")}` : `added; ${answer.manifest} has ${answer.rows} rows and validates clean`;
  } catch (error) { $("append-result").textContent = `not added: ${error.message}`; }
};

(async () => {
  const settings = await api("/api/settings");
  maxBrushRadius = settings.max_brush_radius;
  $("model").textContent = `model: ${settings.model}`;
  if (settings.manifest) $("manifest-uri").value = settings.manifest;
  if (settings.write.length) $("target-manifest").placeholder = `a manifest under ${settings.write.join(" or ")}`;
  else $("target-manifest").placeholder = "the studio may write no manifest (start it with --write-prefix)";
  $("where").textContent = `relative paths are under ${settings.cwd}`;
  setMode("polygon");
})();
