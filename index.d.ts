// The public types of distlock (CommonJS entry). The declarations, with their docs, are
// generated from ts/ into dist/.
export * from './dist/index'
