// Draws the run's Mermaid diagram (mermaid.min.js ships with the package: no CDN).
if (window.mermaid) {
  window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });
  window.mermaid.run({ querySelector: "pre.mermaid" }).then(
    () => document.body.setAttribute("data-diagram", "drawn"),
    (error) => document.body.setAttribute("data-diagram", "failed: " + error),
  );
}
