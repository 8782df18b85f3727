// Copy buttons: <button data-copy="ID"> copies the text of element ID; a form with
// data-confirm asks first. Loaded from this origin only; the pages carry no inline script
// (Content-Security-Policy forbids it).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const text = document.getElementById(button.dataset.copy).textContent.trim();
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard (plain http off localhost): select the text for Ctrl-C instead.
    const range = document.createRange();
    range.selectNodeContents(document.getElementById(button.dataset.copy));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = "Press Ctrl-C";
    return;
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});

// Only a safeguard against a slip of the mouse: without script the form is sent unasked.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !confirm(message)) event.preventDefault();
});
