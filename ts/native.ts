/** The generated napi loader, typed. The only module that touches the raw binding. */
import type * as Native from '../native'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const binding: typeof Native = require('../native.cjs')

export default binding
export type NativeHandle = Native.NativeHandle
export type CancelToken = Native.CancelToken

/** What every native provider class offers. */
export interface NativeProvider {
  acquire(
    name: string,
    kind: string,
    maxCount?: number | null,
    timeoutMs?: number | null,
    cancel?: Native.CancelToken | null,
  ): Native.NativeHandle | undefined | null | Promise<Native.NativeHandle | undefined | null>
  readonly isClosed: boolean
  close(): Promise<unknown>
}
