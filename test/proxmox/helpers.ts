import { expect } from 'vitest';
import { DomainError } from '../../src/errors.js';
import { ProxmoxClient, type ProxmoxClientOptions } from '../../src/proxmox/index.js';

/** A client that may reach the simulator on 127.0.0.1; every test closes it. */
export function makeClient(overrides: Partial<ProxmoxClientOptions> = {}): ProxmoxClient {
  return new ProxmoxClient({
    timeoutMs: 5_000,
    allowLoopbackHosts: true,
    allowPrivateHosts: false,
    ...overrides,
  });
}

/** Awaits `p`, asserts it rejects with a DomainError of `code`, and returns the error. */
export async function expectCode(p: Promise<unknown>, code: string): Promise<DomainError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  if (caught === undefined) throw new Error(`expected a ${code} error, but the call succeeded`);
  if (!(caught instanceof DomainError)) {
    throw new Error(`expected a DomainError ${code}, got ${String(caught)}`, { cause: caught });
  }
  expect(caught.code, caught.message).toBe(code);
  expect(caught.extensions['code']).toBe(code);
  return caught;
}

/** Measures how long `p` takes to settle (ms). */
export async function timed<T>(p: Promise<T>): Promise<{ ms: number; result: PromiseSettledResult<T> }> {
  const start = performance.now();
  const [result] = await Promise.allSettled([p]);
  return { ms: performance.now() - start, result: result };
}
