// What both pages use: an element by id, elements built from data (always as text: the
// page never parses a value as HTML, so a stored `<img onerror=…>` stays text), and the
// studio's JSON API (errors as exceptions carrying the server's one sentence).
const $ = (id) => document.getElementById(id);

// An element with properties (`className`, `textContent`, `dataset`, `style`, handlers)
// and children (elements or strings, added as text).
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { dataset, style, ...rest } = props;
  Object.assign(node, rest);
  Object.assign(node.dataset, dataset || {});
  Object.assign(node.style, style || {});
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// A <select>'s options from values ([value, label] pairs or plain values), keeping `chosen`.
function setOptions(select, values, chosen) {
  select.replaceChildren(...values.map((v) => {
    const [value, label] = Array.isArray(v) ? v : [v, v];
    return el("option", { value: String(value), textContent: String(label), selected: value === chosen });
  }));
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const text = await response.text();
  let answer;
  try { answer = JSON.parse(text); } catch { answer = { error: text.trim() || `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}
