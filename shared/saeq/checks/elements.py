"""The builtin closed category: the chemical elements hydrogen (1) to curium (96), every one of
which has an English builtin article, with its place in the periodic table for the plot."""

from __future__ import annotations

from dataclasses import dataclass

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm").split()
_NAMES = (
    "Hydrogen Helium Lithium Beryllium Boron Carbon Nitrogen Oxygen Fluorine Neon Sodium Magnesium "
    "Aluminium Silicon Phosphorus Sulfur Chlorine Argon Potassium Calcium Scandium Titanium Vanadium "
    "Chromium Manganese Iron Cobalt Nickel Copper Zinc Gallium Germanium Arsenic Selenium Bromine "
    "Krypton Rubidium Strontium Yttrium Zirconium Niobium Molybdenum Technetium Ruthenium Rhodium "
    "Palladium Silver Cadmium Indium Tin Antimony Tellurium Iodine Xenon Caesium Barium Lanthanum "
    "Cerium Praseodymium Neodymium Promethium Samarium Europium Gadolinium Terbium Dysprosium Holmium "
    "Erbium Thulium Ytterbium Lutetium Hafnium Tantalum Tungsten Rhenium Osmium Iridium Platinum Gold "
    "Mercury Thallium Lead Bismuth Polonium Astatine Radon Francium Radium Actinium Thorium "
    "Protactinium Uranium Neptunium Plutonium Americium Curium").split()
TITLE_OF = {"Mercury": "Mercury (element)"}
"""English article titles that differ from the element's name."""


@dataclass(frozen=True)
class Element:
    z: int
    symbol: str
    name: str
    row: int
    """Row in the periodic-table plot: periods 1-7, then 8 and 9 for lanthanides and actinides."""
    column: int
    """Group 1-18 (lanthanides and actinides: 3 to 17 in their own rows)."""


_PERIOD_STARTS = (1, 3, 11, 19, 37, 55, 87)


def _place(z: int) -> tuple[int, int]:
    if 57 <= z <= 71 or 89 <= z <= 103:  # the f-block, drawn in its own two rows
        return (8, z - 57 + 3) if z <= 71 else (9, z - 89 + 3)
    period = sum(1 for first in _PERIOD_STARTS if first <= z)
    offset = z - _PERIOD_STARTS[period - 1]
    if period == 1:
        return 1, 1 if z == 1 else 18
    if period in (2, 3):  # s-block then p-block: groups 1-2, 13-18
        return period, offset + 1 if offset < 2 else offset + 11
    if period in (4, 5):
        return period, offset + 1
    return period, offset + 1 if offset < 2 else offset - 13  # after the 15 f-block elements


ELEMENTS = tuple(Element(z, s, n, *_place(z)) for z, (s, n) in enumerate(zip(_SYMBOLS, _NAMES), start=1))
assert len(ELEMENTS) == 96
