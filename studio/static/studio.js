// What both pages use: an element by id, and the studio's JSON API (errors as exceptions
// carrying the server's message).
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || JSON.stringify(answer.detail || answer));
  return answer;
}
