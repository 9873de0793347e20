// The public types of distlock (ES module entry). The declarations, with their docs, are
// generated from ts/ into dist/.
export * from './dist/index.js'
