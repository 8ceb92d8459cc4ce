// Starts `dsv3 serve` on an ephemeral loopback port for a test and stops it (SIGTERM) afterwards.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export function startServer(args = []) {
  const bin = path.resolve(root, process.env.DSV3_BIN || "build/dsv3");
  const child = spawn(bin, ["serve", "-m", "models/kjv", "--port", "0", ...args], { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("dsv3 serve did not get ready in 60 s:\n" + log)), 60000);
    child.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m && log.includes("dsv3 serve: ready")) {
        clearTimeout(timer);
        resolve({
          url: m[1],
          log: () => log,
          stop: () => new Promise((done) => { child.once("exit", (code) => done(code)); child.kill("SIGTERM"); }),
        });
      }
    });
    child.once("exit", (code) => { clearTimeout(timer); reject(new Error(`dsv3 serve exited with ${code}:\n${log}`)); });
  });
}
