export { createVmidStore } from './create-store.js';
export {
  VmidService,
  type VmidServiceOptions,
  type FetchTakenVmids,
  type VmidListing,
  type VmidAuthority,
  type VmidRange,
} from './vmid-service.js';
export { RedisVmidStore, type RedisVmidStoreOptions } from './redis-store.js';
export { MemoryVmidStore } from './memory-store.js';
export { DurableVmidStore } from './durable-store.js';
export { ReservationRecord } from './reservation-record.js';
export { RedisEventHub } from './redis-event-hub.js';
export type {
  VmidStore,
  VmidSnapshot,
  CachedSet,
  Guest,
  GuestListing,
  RefreshOutcome,
  ReserveOutcome,
  ReserveRequest,
  HeldReservation,
  ReservationSeeder,
} from './store.js';
export { CacheUnavailableError, SERVICE_UNAVAILABLE } from './errors.js';
export {
  VMID_MIN,
  VMID_MAX,
  type NodeRef,
  type VmidSet,
  type VmidReservation,
  type VmidEvent,
  type VmidEventKind,
} from './types.js';
export {
  checkVmid,
  checkMin,
  checkTtlSeconds,
  DEFAULT_RESERVATION_TTL_S,
  RESERVATION_TTL_MIN_S,
  RESERVATION_TTL_MAX_S,
} from './validation.js';
