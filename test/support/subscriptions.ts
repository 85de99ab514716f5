import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import type { TestServer } from './test-server.js';

/**
 * A subscription as a dashboard holds it, collecting what arrives: `events` are the values of
 * the operation's one root field (e.g. `vmidEvents`), in order.
 */
export interface Subscription<T> {
  events: T[];
  /** GraphQL errors of results without data, and a transport error. */
  errors: unknown[];
  /** The server completed the subscription. */
  readonly completed: boolean;
  /** Resolves once `count` events have arrived (rejects after `timeoutMs`). */
  until(count: number, timeoutMs?: number): Promise<T[]>;
  close(): Promise<void>;
}

type Endpoint = Pick<TestServer, 'wsUrl' | 'graphqlUrl'>;

/** Over graphql-ws (`graphql-transport-ws`), the token in connectionParams; no reconnects. */
export function subscribeWs<T>(
  server: Endpoint,
  token: string,
  query: string,
  variables: Record<string, unknown> = {},
): Subscription<T> {
  const collected = collector<T>();
  const client = createClient({
    url: server.wsUrl,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    connectionParams: { authorization: `Bearer ${token}` },
  });
  const dispose = client.subscribe<Record<string, T>>(
    { query, variables },
    {
      next: (r) => (r.data ? collected.push(rootField(r.data)) : collected.errors.push(r.errors)),
      error: (e) => collected.errors.push(e),
      complete: () => collected.complete(),
    },
  );
  return collected.subscription(async () => {
    dispose();
    await client.dispose();
  });
}

/**
 * Over SSE (a POST with `Accept: text/event-stream`), read in the background. `contentType`
 * resolves with the answer's content type.
 */
export function subscribeSse<T>(
  server: Endpoint,
  token: string,
  query: string,
  variables: Record<string, unknown> = {},
): Subscription<T> & { contentType: Promise<string | null> } {
  const collected = collector<T>();
  const ac = new AbortController();
  const response = fetch(server.graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
    signal: ac.signal,
  });
  void (async () => {
    const reader = (await response).body!.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return collected.complete();
      buffer += decoder.decode(value, { stream: true });
      let idx;
      while ((idx = buffer.indexOf('\n\n')) >= 0) {
        const lines = buffer.slice(0, idx).split('\n');
        buffer = buffer.slice(idx + 2);
        if (lines.includes('event: complete')) return collected.complete();
        const data = lines.find((l) => l.startsWith('data:'));
        if (!data || data.length <= 6) continue;
        const payload = JSON.parse(data.slice(5)) as { data?: Record<string, T>; errors?: unknown };
        if (payload.data) collected.push(rootField(payload.data));
        else collected.errors.push(payload.errors);
      }
    }
  })().catch((err: unknown) => {
    if (!ac.signal.aborted) collected.errors.push(err);
  });
  return Object.assign(
    collected.subscription(async () => ac.abort()),
    { contentType: response.then((r) => r.headers.get('content-type')) },
  );
}

function rootField<T>(data: Record<string, T>): T {
  return Object.values(data)[0]!;
}

function collector<T>() {
  const events: T[] = [];
  const errors: unknown[] = [];
  let completed = false;
  let waiters: Array<() => void> = [];
  const wake = () => {
    const now = waiters;
    waiters = [];
    for (const w of now) w();
  };
  return {
    errors,
    push(event: T) {
      events.push(event);
      wake();
    },
    complete() {
      completed = true;
      wake();
    },
    subscription(close: () => Promise<void>): Subscription<T> {
      return {
        events,
        errors,
        get completed() {
          return completed;
        },
        async until(count, timeoutMs = 10_000) {
          const deadline = Date.now() + timeoutMs;
          while (events.length < count) {
            if (completed) throw new Error(`completed after ${events.length} of ${count} events`);
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`${events.length} of ${count} events in ${timeoutMs} ms`);
            await new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, left);
              waiters.push(() => {
                clearTimeout(timer);
                resolve();
              });
            });
          }
          return events.slice(0, count);
        },
        close,
      };
    },
  };
}
