"use strict";
// Filter and sort the cards in place. The page is static HTML: this only hides and reorders.
(() => {
  const grid = document.getElementById("grid");
  const cards = Array.from(grid.querySelectorAll(".card"));
  const filter = document.getElementById("filter");
  const status = document.getElementById("status");
  const sort = document.getElementById("sort");
  const shown = document.getElementById("shown");
  let haystacks = null;  // lower-cased text of each card, made on the first filter

  function apply() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    if (words.length && haystacks === null) {
      haystacks = cards.map((card) => card.textContent.toLowerCase());
    }
    const wanted = status.value;
    let count = 0;
    cards.forEach((card, i) => {
      const visible = (!wanted || card.dataset.status === wanted)
        && words.every((word) => haystacks[i].includes(word));
      card.hidden = !visible;
      if (visible) count += 1;
    });
    shown.textContent = `${count} of ${cards.length} shown`;
  }

  function value(card, key) {
    const number = parseFloat(card.dataset[key]);
    return Number.isNaN(number) ? null : number;
  }

  function reorder() {
    const [key, direction] = sort.value.split("-");
    const sign = direction === "desc" ? -1 : 1;
    const sorted = cards.slice().sort((a, b) => {
      const x = value(a, key);
      const y = value(b, key);
      if (x === y) return value(a, "index") - value(b, "index");
      if (x === null) return 1;  // unknown values last, whichever the direction
      if (y === null) return -1;
      return sign * (x - y);
    });
    const fragment = document.createDocumentFragment();
    sorted.forEach((card) => fragment.appendChild(card));
    grid.appendChild(fragment);
  }

  let frame = 0;
  filter.addEventListener("input", () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(apply);
  });
  status.addEventListener("change", apply);
  sort.addEventListener("change", reorder);
  if (sort.value !== "index-asc") reorder();  // a browser restoring the form after reload
  apply();
})();
