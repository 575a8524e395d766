// Parse and render Mermaid diagrams with the real mermaid package, in Node, on a jsdom DOM.
//
// stdin:  a JSON object {name: "mermaid source", ...}
// stdout: a JSON object {"mermaid": version, "results": {name: result}}, where result is
//         {"ok": true, "diagramType": ..., "nodes": [{"id", "classes", "text"}]} or
//         {"ok": false, "stage": "parse" | "render", "error": message}.
// Exit status: 0 when every diagram parsed and rendered, 1 when one did not, 2 on setup errors.
//
// mermaid.parse() runs the diagram's grammar and database (it needs a DOM for DOMPurify);
// mermaid.render() then lays the diagram out to SVG. jsdom has no text layout, so text boxes
// are given a size from their character count: positions are meaningless, structure is real.
import { readFileSync } from "node:fs";

const log = console.log;
for (const level of ["log", "info", "warn", "debug"]) console[level] = console.error;

let JSDOM, mermaid, version;
try {
  ({ JSDOM } = await import("jsdom"));
  const dom = new JSDOM("<!DOCTYPE html><html><body></body></html>", { pretendToBeVisual: true });
  const win = dom.window;
  globalThis.window = win;
  globalThis.document = win.document;
  globalThis.CSSStyleSheet = win.CSSStyleSheet;
  const size = (el) => 8 * (el.textContent || "").length;
  win.SVGElement.prototype.getBBox = function () {
    return { x: 0, y: 0, width: size(this) + 8, height: 16 };
  };
  win.SVGElement.prototype.getComputedTextLength = function () {
    return size(this);
  };
  ({ default: mermaid } = await import("mermaid"));
  mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });
  version = JSON.parse(
    readFileSync(new URL("./node_modules/mermaid/package.json", import.meta.url), "utf8"),
  ).version;
} catch (error) {
  console.error(`mermaid check setup failed: ${error?.stack ?? error}`);
  process.exit(2);
}

function nodesOf(svg) {
  const fragment = JSDOM.fragment(svg);
  const nodes = [];
  for (const el of fragment.querySelectorAll("g.node")) {
    const parts = [];
    const walker = el.ownerDocument.createTreeWalker(el, 4 /* NodeFilter.SHOW_TEXT */);
    for (let text = walker.nextNode(); text; text = walker.nextNode()) {
      const value = text.nodeValue.trim();
      if (value) parts.push(value);
    }
    nodes.push({ id: el.id, classes: (el.getAttribute("class") || "").split(/\s+/), text: parts.join(" ") });
  }
  return nodes;
}

const message = (error) => String(error?.message ?? error);
const diagrams = JSON.parse(readFileSync(0, "utf8"));
const results = {};
let failed = false;
let counter = 0;
for (const [name, text] of Object.entries(diagrams)) {
  let parsed;
  try {
    parsed = await mermaid.parse(text);
  } catch (error) {
    results[name] = { ok: false, stage: "parse", error: message(error) };
    failed = true;
    continue;
  }
  try {
    const { svg } = await mermaid.render(`diagram${counter++}`, text);
    results[name] = { ok: true, diagramType: parsed.diagramType, nodes: nodesOf(svg) };
  } catch (error) {
    results[name] = { ok: false, stage: "render", error: message(error) };
    failed = true;
  }
}
log(JSON.stringify({ mermaid: version, results }));
process.exit(failed ? 1 : 0);
