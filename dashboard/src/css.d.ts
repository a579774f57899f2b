// The widget imports its stylesheet as text (scripts/build.mjs loads .css as text for it).
declare module '*.css' {
  const text: string;
  export default text;
}
