import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * The request a piece of work belongs to, carried along async calls, so every log line
 * written while serving it — by a resolver, a service, the Proxmox client or the error
 * masking — carries its `requestId` without passing loggers around.
 */
export interface RequestScope {
  requestId: string;
}

export const requestScope = new AsyncLocalStorage<RequestScope>();

export function currentRequestId(): string | undefined {
  return requestScope.getStore()?.requestId;
}
