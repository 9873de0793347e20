/** The generated napi loader, typed. The only module that touches the raw binding. */
import type * as Native from '../native'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding: typeof Native = require('../native.cjs')

export default binding
export type NativeHandle = Native.NativeHandle
export type CancelToken = Native.CancelToken

export type NativeProvider = Native.NativeProvider
export type NativeLockInfo = Native.NativeLockInfo
