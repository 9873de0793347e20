import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.spec.ts'],
    // Checks every error message a spec provokes (no Rust Debug text, no doubled prefixes).
    setupFiles: ['__test__/setup/messages.ts'],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
    server: {
      deps: {
        // The package under test is loaded by Node itself, exactly as users load it, not
        // transformed by Vite.
        external: [/\/dist\//, /native\.cjs$/],
      },
    },
  },
})
