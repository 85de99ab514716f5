import type { IncomingMessage } from 'node:http';
import type { AuthService, Viewer } from './auth-service.js';

/** Which budget a refused request spent: its address's (IPv4, IPv6 /64) or its IPv6 /48's. */
export type AnonymousBucket = 'anonymous' | 'anonymousSite';

/** What a request's token turned out to be, decided once per request (or WebSocket). */
export type TokenCheck =
  | { kind: 'viewer'; viewer: Viewer }
  /** No token, or one that does not verify; `charged` once the lookup in vain was charged to the address. */
  | { kind: 'anonymous'; authFailure: 'missing' | 'invalid'; charged: boolean }
  /** The token could not be checked (database down). */
  | { kind: 'unchecked'; error: unknown; charged: boolean }
  /** The address (or its IPv6 /48) has spent its budget for lookups in vain: refused before any. */
  | { kind: 'refused'; retryAfterSeconds: number; bucket: AnonymousBucket };

export type Refused = Extract<TokenCheck, { kind: 'refused' }>;
/** A check that leaves the request to be answered (a refusal is answered by the transport). */
export type UnrefusedTokenCheck = Exclude<TokenCheck, { kind: 'refused' }>;

/**
 * What a token lookup only the database can answer may cost the address that asked
 * (src/http/anonymous-budget.ts). Absent, or `enabled` false: lookups are free.
 */
export interface LookupBudget {
  readonly enabled: boolean;
  /** The refusal this instance remembers for the address, without asking Redis. */
  spentRefusal(req: IncomingMessage): Refused | null;
  /** Charges a lookup that found nothing (or failed): null, or the refusal once spent. */
  charge(req: IncomingMessage): Promise<Refused | null>;
}

/**
 * The one way a bearer token becomes a viewer, for HTTP, the Yoga context and WebSocket.
 * `chargedTo` is the request a lookup in vain is charged to (null: charged to nobody, as the
 * re-check of an open socket's token per operation). Synchronous while no I/O is needed (no
 * token, or an answer verify has cached — every request of a dashboard in use), so the hot
 * path awaits nothing extra.
 */
export type Authenticate = (
  token: string | null,
  chargedTo: IncomingMessage | null,
) => TokenCheck | Promise<TokenCheck>;

export function createAuthenticate(
  auth: Pick<AuthService, 'verify' | 'verifyCached'>,
  budget?: LookupBudget,
): Authenticate {
  const charging = budget?.enabled ? budget : null;

  async function lookUp(token: string): Promise<TokenCheck> {
    try {
      const viewer = await auth.verify(token);
      return viewer ? { kind: 'viewer', viewer } : { kind: 'anonymous', authFailure: 'invalid', charged: false };
    } catch (error) {
      return { kind: 'unchecked', error, charged: false };
    }
  }

  /**
   * A lookup charged when it finds nothing (or fails): a valid token never spends the
   * address's budget, so a burst of dashboards reconnecting through one NAT after a restart is
   * never refused for it. Not started for an address this instance has seen spent: a flood of
   * made-up tokens costs the database at most the lookups in flight before its first refusal.
   */
  async function lookUpCharged(token: string, budget: LookupBudget, req: IncomingMessage): Promise<TokenCheck> {
    const spent = budget.spentRefusal(req);
    if (spent) return spent;
    let check: TokenCheck;
    try {
      const viewer = await auth.verify(token);
      if (viewer) return { kind: 'viewer', viewer };
      check = { kind: 'anonymous', authFailure: 'invalid', charged: true };
    } catch (error) {
      check = { kind: 'unchecked', error, charged: true };
    }
    return (await budget.charge(req)) ?? check;
  }

  return (token, chargedTo) => {
    if (!token) return { kind: 'anonymous', authFailure: 'missing', charged: false };
    const cached = auth.verifyCached(token);
    if (cached) return { kind: 'viewer', viewer: cached };
    if (cached === null) return { kind: 'anonymous', authFailure: 'invalid', charged: false };
    return charging && chargedTo ? lookUpCharged(token, charging, chargedTo) : lookUp(token);
  };
}
