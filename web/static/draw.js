// The drawing pad: pointer strokes on a white canvas, sent as a PNG file through the same
// form field as an upload, so the server has one path for both.
(function () {
  "use strict";
  const STROKE_WIDTH = 20; // px on the 280 px pad: about MNIST's stroke once scaled to 28 px
  const pad = document.getElementById("pad");
  const form = document.getElementById("draw-form");
  const hint = document.getElementById("draw-hint");
  if (!pad || !form) return;
  const HINT = hint.textContent;
  const ctx = pad.getContext("2d");
  let drawing = false;
  let inked = false;

  function clear() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    inked = false;
  }

  function point(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  }

  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    hint.textContent = HINT;
    hint.classList.remove("error");
    pad.setPointerCapture(event.pointerId);
    const [x, y] = point(event);
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x, y);
    ctx.stroke();
    inked = true;
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const [x, y] = point(event);
    ctx.lineTo(x, y);
    ctx.stroke();
  });
  for (const name of ["pointerup", "pointercancel"]) {
    pad.addEventListener(name, () => { drawing = false; });
  }

  document.getElementById("clear").addEventListener("click", clear);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!inked) {
      hint.textContent = "Draw a digit first.";
      hint.classList.add("error");
      return;
    }
    pad.toBlob((blob) => {
      const files = new DataTransfer();
      files.items.add(new File([blob], "drawing.png", { type: "image/png" }));
      form.elements.image.files = files.files;
      form.submit();
    }, "image/png");
  });

  clear();
  ctx.strokeStyle = "#000";
  ctx.lineWidth = STROKE_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
})();
