"""LoRA in one picture: the frozen weight W beside the two thin matrices B and A, drawn to scale."""

from __future__ import annotations


def draw(d_out: int, d_in: int, r: int, alpha: float, name: str = "q_proj"):
    """W (d_out x d_in) + (alpha / r) * B (d_out x r) @ A (r x d_in), rectangles in proportion."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    scale = 1 / max(d_out, d_in)  # the largest side is 1 unit long
    gap = 0.25
    fig, ax = plt.subplots(figsize=(10, 3.2))
    x = 0.0

    def block(width, height, color, label, count):
        nonlocal x
        ax.add_patch(Rectangle((x, (1 - height) / 2), width, height, color=color, alpha=0.85))
        ax.text(x + width / 2, (1 - height) / 2 - 0.08, label, ha="center", va="top", fontsize=10)
        ax.text(x + width / 2, (1 + height) / 2 + 0.04, f"{count:,}", ha="center", va="bottom", fontsize=9)
        x += width + gap

    def symbol(text):
        nonlocal x
        ax.text(x - gap / 2, 0.5, text, ha="center", va="center", fontsize=16)

    block(d_in * scale, d_out * scale, "#9e9e9e", f"W  {d_out}x{d_in}\nfrozen", d_out * d_in)
    x += 0.1
    symbol("+")
    ax.text(x, 0.5, f"({alpha:g}/{r}) ·", ha="left", va="center", fontsize=12)
    x += 0.55
    block(max(r * scale, 0.01), d_out * scale, "#2e7d32", f"B  {d_out}x{r}\nstarts at 0", d_out * r)
    block(d_in * scale, max(r * scale, 0.01), "#66bb6a", f"A  {r}x{d_in}\nrandom start", r * d_in)
    ax.set(xlim=(-0.05, x), ylim=(-0.35, 1.2), aspect="equal")
    ax.axis("off")
    trained = r * (d_in + d_out)
    ax.set_title(f"{name}: LoRA trains {trained:,} numbers instead of {d_out * d_in:,} "
                 f"({100 * trained / (d_out * d_in):.1f}%); the numbers above each block count its entries",
                 fontsize=10)
    return fig
