export {
  startSimulator,
  type Simulator,
  type SimulatorOptions,
  type SimFault,
  type SimGuest,
  type SimStats,
  type SimTarget,
  type SimToken,
  type GuestType,
} from './simulator.js';
export { generateSelfSigned, generateCaSigned, pemFingerprint, type SimCertificate } from './cert.js';
