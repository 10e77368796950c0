// Make `dvc plots show` pages that draw offline wherever they are written: run by `npm ci` (postinstall).
//
// Reads the committed page template .dvc/plots_template.html, puts Vega, Vega-Lite and vega-embed from
// node_modules/ inside it (inline <script> elements, so the page needs no other file and no network),
// writes the result to .dvc/plots_offline.html (not committed: it holds third-party code) and selects it
// for this clone with `dvc config --local plots.html_template plots_offline.html`.
//
//   node .dvc/offline_plots.mjs [PROJECT_ROOT]
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(process.argv[2] || path.join(path.dirname(fileURLToPath(import.meta.url)), ".."));
const MARKER = "<!-- offline Vega: inlined here by .dvc/offline_plots.mjs -->";
const LIBRARIES = ["vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js"];
// DVC fills these placeholders by plain text replacement: inlined code must not contain them.
const PLACEHOLDERS = ["{plot_divs}", "{scripts}", "{refresh_tag}"];

const template = readFileSync(path.join(root, ".dvc", "plots_template.html"), "utf8");
if (!template.includes(MARKER)) {
  throw new Error(`.dvc/plots_template.html lacks the line ${MARKER}`);
}
const scripts = LIBRARIES.map((name) => {
  const code = readFileSync(path.join(root, "node_modules", name), "utf8");
  const clash = PLACEHOLDERS.find((placeholder) => code.includes(placeholder));
  if (clash) throw new Error(`node_modules/${name} contains ${clash}, which DVC would replace`);
  // "</script" inside the code would end the element early; "<\/script" means the same to JavaScript.
  return `<script>/* node_modules/${name} */\n${code.replaceAll("</script", "<\\/script")}\n</script>`;
});
const output = path.join(root, ".dvc", "plots_offline.html");
// A function, so that "$&" and the like in the code are not read as replacement patterns.
writeFileSync(output, template.replace(MARKER, () => scripts.join("\n")));
console.log(`wrote ${path.relative(root, output)} (Vega inlined)`);

try {
  execFileSync("dvc", ["config", "--local", "plots.html_template", "plots_offline.html"], { cwd: root,
    stdio: ["ignore", "ignore", "pipe"] });
  console.log("dvc plots show now uses it (dvc config --local plots.html_template plots_offline.html)");
} catch (error) {
  console.log("to use it, run in the project: dvc config --local plots.html_template plots_offline.html");
}
