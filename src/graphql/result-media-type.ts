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
