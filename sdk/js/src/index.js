export { Tally } from './tally.js';
export { TallyError, InsufficientBalanceError } from './errors.js';
