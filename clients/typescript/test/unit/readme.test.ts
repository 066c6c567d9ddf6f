import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const read = (path: string) => readFileSync(new URL(path, import.meta.url), "utf8");
const lines = (s: string) => s.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("//"));

describe("the READMEs' examples", () => {
  for (const readme of ["../../../../README.md", "../../README.md"]) {
    it(`${readme} shows code that type-checks (test/readme-example.ts)`, () => {
      const block = read(readme).split("```ts\nimport { TidingsClient")[1]!.split("```")[0]!;
      const example = lines(read("../readme-example.ts")).join("\n");
      const shown = lines(`import { TidingsClient${block}`);
      expect(shown.length).toBeGreaterThan(5);
      expect(example).toContain(shown[0]);
      expect(example).toContain(shown.slice(1).join("\n"));
    });
  }
});
