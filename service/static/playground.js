// The playground: a conversation kept in the page, sent to POST /respond; a clicked response
// becomes the next turn. User text is only ever set as textContent, never parsed as HTML.
"use strict";

const PLAIN_DECODING = {  // the papers' protocol; omitted fields take the service's defaults
  no_repeat_ngram_size: 0, repetition_penalty: 1.0, top_k: 0, top_p: 1.0, allow_unk: true,
  anti_lm_weight: 0,
};

const turns = [];  // {speaker, text}, oldest first
const $ = (id) => document.getElementById(id);
const other = (speaker) => (speaker === "A" ? "B" : "A");
const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function renderConversation() {
  const list = $("conversation");
  list.replaceChildren(...turns.map((turn, i) => {
    const item = document.createElement("li");
    item.className = `turn speaker-${turn.speaker}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = turn.speaker;
    const said = document.createElement("span");
    said.className = "said";
    said.textContent = turn.text;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.title = "Remove this turn";
    remove.setAttribute("aria-label", `Remove turn ${i + 1}`);
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      turns.splice(i, 1);
      clearResponses();
      renderConversation();
    });
    item.append(who, said, remove);
    return item;
  }));
  $("conversation-empty").hidden = turns.length > 0;
}

function addTurn(speaker, text) {
  turns.push({ speaker, text });
  $("speaker").value = other(speaker);  // the next turn is usually the other speaker's
  clearResponses();
  renderConversation();
}

// The responses, and the lines about them, belong to the conversation they answered.
function clearResponses() {
  $("responses").replaceChildren();
  showMessage("status", "");
  showMessage("warning", "");
}

function showMessage(id, text) {
  $(id).textContent = text || "";
  $(id).hidden = !text;
}

function requestBody() {
  const decoding = $("decoding").value;
  const body = {
    conversation: turns,
    num_samples: Number($("num-samples").value) || 1,
    decoding,
  };
  if (decoding === "sample") body.temperature = Number($("temperature").value);
  return $("readable").checked ? body : { ...body, ...PLAIN_DECODING };
}

function errorText(status, payload) {
  const detail = payload && payload.detail;
  if (typeof detail === "string") return `${status}: ${detail}`;
  if (Array.isArray(detail)) {
    return `${status}: ` + detail.map((e) => `${(e.loc || []).slice(1).join(".")} ${e.msg}`).join("; ");
  }
  return `${status}: the request failed`;
}

function renderResponses(result) {
  const cards = result.responses.map((response) => {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "response";
    card.title = `Add as ${result.responder}'s turn`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = response.text || "(an empty response)";
    const meta = document.createElement("span");
    meta.className = "meta";
    const logProb = response.log_prob === null ? "–" : response.log_prob.toFixed(1);
    meta.textContent = `${count(response.num_tokens, "token", "tokens")} · log p ${logProb}`;
    card.append(text, meta);
    card.addEventListener("click", () => addTurn(result.responder, response.text));
    return card;
  });
  $("responses").replaceChildren(...cards);
  const input = result.input;
  const unread = input.unreadable
    ? ` ${count(input.unreadable, "piece", "pieces")} of text it cannot read (other ` +
      "scripts, accented letters, emoji) " + (input.unreadable === 1 ? "was" : "were") + " dropped."
    : "";
  showMessage("status",
    `${count(result.responses.length, "response", "responses")} as ${result.responder}: ` +
    "click one to add it. " +
    `Read ${count(input.tokens, "token", "tokens")} from the last ` +
    `${count(input.turns_read, "turn", "turns")} of ${input.turns}` +
    (input.unknown_tokens ? `, ${input.unknown_tokens} not in the vocabulary.` : ".") + unread);
  showMessage("warning", input.warning);
}

async function respond(event) {
  event.preventDefault();
  const button = $("respond");
  button.disabled = true;
  showMessage("error", "");
  showMessage("status", "Asking the model…");
  try {
    const reply = await fetch("respond", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(requestBody()),
    });
    const payload = await reply.json().catch(() => null);
    if (!reply.ok) throw new Error(errorText(reply.status, payload));
    renderResponses(payload);
  } catch (error) {
    showMessage("status", "");
    showMessage("error", error.message);
  } finally {
    button.disabled = false;
  }
}

$("turn-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("turn-text").value.trim();
  if (!text) return;
  addTurn($("speaker").value, text);
  $("turn-text").value = "";
  $("turn-text").focus();
});
$("clear").addEventListener("click", () => {
  turns.length = 0;
  $("speaker").value = "A";
  clearResponses();
  renderConversation();
});
$("decoding").addEventListener("change", () => {
  $("temperature").disabled = $("decoding").value !== "sample";
});
$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(1);
});
$("settings").addEventListener("submit", respond);
renderConversation();
