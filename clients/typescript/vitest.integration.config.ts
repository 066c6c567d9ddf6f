import { defineConfig } from "vitest/config";

// Run by tests/it/sdk_typescript.rs against a real server (TIDINGS_URL, TIDINGS_SECRET), after
// the package is built (dist/).
export default defineConfig({
  test: {
    include: ["test/integration/**/*.test.ts"],
    environment: "node",
    testTimeout: 60_000,
    fileParallelism: false,
  },
});
