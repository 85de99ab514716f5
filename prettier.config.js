// Matches the style the code was written in: single quotes, semicolons, long lines.
export default {
  printWidth: 120,
  singleQuote: true,
  trailingComma: 'all',
};
