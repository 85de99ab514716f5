import type { IncomingHttpHeaders } from 'node:http';
import { getCORSHeadersByRequestAndOptions } from '@whatwg-node/server';

/**
 * The pieces of Yoga's answer that a request answered outside Yoga must share with it (the
 * anonymous budget's 429, the prepared-query path); its media type is resultMediaType
 * (src/graphql/result-media-type.ts). CORS is Yoga's own (@whatwg-node/server's
 * export), which reads nothing of a request but `headers.get(name)`: a Node request's headers
 * are handed to it as that, instead of building a Fetch Request per call.
 */
function fetchHeadersOf(headers: IncomingHttpHeaders): Pick<Request, 'headers'> {
  return {
    headers: {
      get: (name: string) => {
        const value = headers[name.toLowerCase()];
        return Array.isArray(value) ? value.join(', ') : (value ?? null);
      },
    } as Headers,
  };
}

/** What Yoga's default CORS (any origin, credentials) adds to a simple request's answer; empty without an Origin. */
export function corsHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const cors = getCORSHeadersByRequestAndOptions(fetchHeadersOf(headers) as Request, {});
  const out: Record<string, string> = {};
  // Lower-cased, as the other headers of these answers: writeHead would send both spellings.
  for (const name in cors) out[name.toLowerCase()] = cors[name]!;
  return out;
}
