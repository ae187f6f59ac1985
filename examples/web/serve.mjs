// A static file server for the example page (default http://localhost:5173,
// an origin the development stack's gateway allows). PORT overrides the port.
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(fileURLToPath(import.meta.url));
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

export function serve(port = 5173, host = "127.0.0.1") {
  const server = http.createServer(async (req, res) => {
    const urlPath = new URL(req.url, "http://x").pathname;
    const file = path.join(root, urlPath === "/" ? "index.html" : path.normalize(urlPath));
    const allowed = file === path.join(root, "index.html") || file.startsWith(path.join(root, "dist") + path.sep);
    if (!allowed || !(await stat(file).catch(() => null))?.isFile()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, host, () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await serve(Number(process.env.PORT ?? 5173), "localhost");
  console.log(`example page on http://localhost:${server.address().port}/#token=<jwt>`);
}
