import type { IncomingHttpHeaders } from 'node:http';
import { getCORSHeadersByRequestAndOptions } from '@whatwg-node/server';

/**
 * The pieces of Yoga's answer that a request answered outside Yoga must share with it (the
 * anonymous budget's 429, the prepared-query path). CORS is Yoga's own (@whatwg-node/server's
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

const RESULT_MEDIA_TYPES = ['application/graphql-response+json', 'application/json'] as const;

/**
 * The media type Yoga answers a single (non-streamed) result with for this Accept header, or
 * null when Yoga would pick no JSON type (406, or a streaming format). A copy of Yoga's
 * negotiation (result-processor/accept.js, use-result-processor.js), because graphql-yoga
 * 5.24 does not export it: utf-8 only, q-values ignored, of all matches the one for the
 * earliest listed type wins.
 */
export function resultMediaType(accept: string | undefined): string | null {
  const asked: string[] = [];
  for (const entry of (accept || '*/*').replace(/\s/g, '').toLowerCase().split(',')) {
    const [mediaType, ...params] = entry.split(';');
    const charset = params.find((p) => p.includes('charset=')) ?? 'charset=utf-8';
    if (mediaType === undefined || charset !== 'charset=utf-8') continue;
    asked.push(mediaType);
  }
  let chosen: string | null = null;
  for (const mediaType of asked.reverse()) {
    const [pre, suf] = mediaType.split('/');
    for (const candidate of RESULT_MEDIA_TYPES) {
      const [cPre, cSuf] = candidate.split('/');
      if ((pre === '*' || pre === cPre) && (suf === '*' || suf === cSuf)) chosen = candidate;
    }
  }
  return chosen;
}

/** What Yoga's default CORS (any origin, credentials) adds to a simple request's answer; empty without an Origin. */
export function corsHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const cors = getCORSHeadersByRequestAndOptions(fetchHeadersOf(headers) as Request, {});
  const out: Record<string, string> = {};
  // Lower-cased, as the other headers of these answers: writeHead would send both spellings.
  for (const name in cors) out[name.toLowerCase()] = cors[name]!;
  return out;
}
