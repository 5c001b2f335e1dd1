"""Tests of latentds.tasks: the five real-task adapters on tiny fixtures laid out like each
dataset's published download, patient-disjoint splits, and the ImageFolder export."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentds.errors import LatentdsError
from latentds.tasks import (
    TASKS, Sample, TaskDataError, boneage_class, class_folder_names, link_name, load_task, patient_split,
    read_table, to_imagefolder,
)

pydicom = pytest.importorskip("pydicom")

# CMMD_clinicaldata_revision.xlsx fixture, written by openpyxl 3.1 (a real third-party xlsx
# writer, so the stdlib reader is tested against a file it did not write):
#   ID1      LeftRight Age number abnormality   classification subtype
#   D1-0001  R         44  2      calcification Benign
#   D1-0002  L         40  2      mass          Malignant      Luminal A
#   D1-0003  L         51  2      both          Malignant      Luminal B
#   D1-0003  R         51  2      mass          Benign
#   D2-0004  R         61  2      calcification Malignant      HER2-enriched
#   D2-0005  L         38  2      mass          Benign
CMMD_XLSX = base64.b64decode("".join([
    "UEsDBBQAAAAIALuQeV1Gx01IlQAAAM0AAAAQAAAAZG9jUHJvcHMvYXBwLnhtbE3PTQvCMAwG4L9S"
    "dreZih6kDkQ9ip68zy51hbYpbYT67+0EP255ecgboi6JIia2mEXxLuRtMzLHDUDWI/o+y8qhiqHk"
    "e64x3YGMsRoPpB8eA8OibdeAhTEMOMzit7Dp1C5GZ3XPlkJ3sjpRJsPiWDQ6sScfq9wcChDneiU+"
    "ixNLOZcrBf+LU8sVU57mym/8ZAW/B7oXUEsDBBQAAAAIALuQeV0rhaGo6wAAAMsBAAARAAAAZG9j"
    "UHJvcHMvY29yZS54bWylkcFOwzAMhl9l6r1109EJRV0umziBhMQkELfI8bZoTRslRu3enrZsHQhu"
    "HOP/82dbqdBLbAM9h9ZTYEtx0bu6iRL9OjkyewkQ8UhOx2wgmiHct8FpHp7hAF7jSR8IijxfgSPW"
    "RrOGUZj62ZhclAZnpf8I9SQwCFSTo4YjiEzAjWUKLv7ZMCUz2Uc7U13XZd1y4oaNBLw9Pb5My6e2"
    "iawbpERVBiUG0twGNV7kz31dwbdidZn9VSCzGCZIPntaJ9fkdbnZ7h4SVeTFKhUiLcqduJd5Kcu7"
    "99H1o/8mdK2xe/sP41WgKvj1b+oTUEsDBBQAAAAIALuQeV2ZXJwjEAYAAJwnAAATAAAAeGwvdGhl"
    "bWUvdGhlbWUxLnhtbO1aW3PaOBR+76/QeGf2bQvGNoG2tBNzaXbbtJmE7U4fhRFYjWx5ZJGEf79H"
    "NhDLlg3tkk26mzwELOn7zkVH5+g4efPuLmLohoiU8nhg2S/b1ru3L97gVzIkEUEwGaev8MAKpUxe"
    "tVppAMM4fckTEsPcgosIS3gUy9Zc4FsaLyPW6rTb3VaEaWyhGEdkYH1eLGhA0FRRWm9fILTlHzP4"
    "FctUjWWjARNXQSa5iLTy+WzF/NrePmXP6TodMoFuMBtYIH/Ob6fkTlqI4VTCxMBqZz9Wa8fR0kiA"
    "gsl9lAW6Sfaj0xUIMg07Op1YznZ89sTtn4zK2nQ0bRrg4/F4OLbL0otwHATgUbuewp30bL+kQQm0"
    "o2nQZNj22q6RpqqNU0/T933f65tonAqNW0/Ta3fd046Jxq3QeA2+8U+Hw66JxqvQdOtpJif9rmuk"
    "6RZoQkbj63oSFbXlQNMgAFhwdtbM0gOWXin6dZQa2R273UFc8FjuOYkR/sbFBNZp0hmWNEZynZAF"
    "DgA3xNFMUHyvQbaK4MKS0lyQ1s8ptVAaCJrIgfVHgiHF3K/99Ze7yaQzep19Os5rlH9pqwGn7bub"
    "z5P8c+jkn6eT101CznC8LAnx+yNbYYcnbjsTcjocZ0J8z/b2kaUlMs/v+QrrTjxnH1aWsF3Pz+Se"
    "jHIju932WH32T0duI9epwLMi15RGJEWfyC265BE4tUkNMhM/CJ2GmGpQHAKkCTGWoYb4tMasEeAT"
    "fbe+CMjfjYj3q2+aPVehWEnahPgQRhrinHPmc9Fs+welRtH2Vbzco5dYFQGXGN80qjUsxdZ4lcDx"
    "rZw8HRMSzZQLBkGGlyQmEqk5fk1IE/4rpdr+nNNA8JQvJPpKkY9psyOndCbN6DMawUavG3WHaNI8"
    "ev4F+Zw1ChyRGx0CZxuzRiGEabvwHq8kjpqtwhErQj5iGTYacrUWgbZxqYRgWhLG0XhO0rQR/Fms"
    "NZM+YMjszZF1ztaRDhGSXjdCPmLOi5ARvx6GOEqa7aJxWAT9nl7DScHogstm/bh+htUzbCyO90fU"
    "F0rkDyanP+kyNAejmlkJvYRWap+qhzQ+qB4yCgXxuR4+5Xp4CjeWxrxQroJ7Af/R2jfCq/iCwDl/"
    "Ln3Ppe+59D2h0rc3I31nwdOLW95GblvE+64x2tc0LihjV3LNyMdUr5Mp2DmfwOz9aD6e8e362SSE"
    "r5pZLSMWkEuBs0EkuPyLyvAqxAnoZFslCctU02U3ihKeQhtu6VP1SpXX5a+5KLg8W+Tpr6F0PizP"
    "+Txf57TNCzNDt3JL6raUvrUmOEr0scxwTh7LDDtnPJIdtnegHTX79l125COlMFOXQ7gaQr4Dbbqd"
    "3Do4npiRuQrTUpBvw/npxXga4jnZBLl9mFdt59jR0fvnwVGwo+88lh3HiPKiIe6hhpjPw0OHeXtf"
    "mGeVxlA0FG1srCQsRrdguNfxLBTgZGAtoAeDr1EC8lJVYDFbxgMrkKJ8TIxF6HDnl1xf49GS49um"
    "ZbVuryl3GW0iUjnCaZgTZ6vK3mWxwVUdz1Vb8rC+aj20FU7P/lmtyJ8MEU4WCxJIY5QXpkqi8xlT"
    "vucrScRVOL9FM7YSlxi84+bHcU5TuBJ2tg8CMrm7Oal6ZTFnpvLfLQwJLFuIWRLiTV3t1eebnK56"
    "Inb6l3fBYPL9cMlHD+U751/0XUOufvbd4/pukztITJx5xREBdEUCI5UcBhYXMuRQ7pKQBhMBzZTJ"
    "RPACgmSmHICY+gu98gy5KRXOrT45f0Usg4ZOXtIlEhSKsAwFIRdy4+/vk2p3jNf6LIFthFQyZNUX"
    "ykOJwT0zckPYVCXzrtomC4Xb4lTNuxq+JmBLw3punS0n/9te1D20Fz1G86OZ4B6zh3OberjCRaz/"
    "WNYe+TLfOXDbOt4DXuYTLEOkfsF9ioqAEativrqvT/klnDu0e/GBIJv81tuk9t3gDHzUq1qlZCsR"
    "P0sHfB+SBmOMW/Q0X48UYq2msa3G2jEMeYBY8wyhZjjfh0WaGjPVi6w5jQpvQdVA5T/b1A1o9g00"
    "HJEFXjGZtjaj5E4KPNz+7w2wwsSO4e2LvwFQSwMEFAAAAAgAu5B5XYgfW+aCAgAAUgoAABgAAAB4"
    "bC93b3Jrc2hlZXRzL3NoZWV0MS54bWyVlm1v4jAMx79K1fdbS2lhmkolGHuSNmliurvXoZg2Wpr0"
    "kgDHt7+ksK6H4kz3ijjx345/OJXzg5AfqgbQwZ+GcTULa63b2yhSZQ0NUdeiBW5OtkI2RBtTVpFq"
    "JZBNJ2pYlMTxJGoI5WGRd3tvssjFTjPK4U0Gatc0RB4XwMRhFo7Cz40VrWrdbURF3pIK3kH/aI3A"
    "mFEfZ0Mb4IoKHkjYzsL56PZx2ik6j58UDmqwDmwxayE+rPG8mYWxvRMwKLUNQczPHu6AMRvJ3OT3"
    "OWj4ldQqh+vP8A9d/eZ6a6LgTrBfdKPrWXgTBhvYkh3TK3F4gnNN2dcVl0STIpfiEEhbbJGXdmFT"
    "GkfKLaR3Lc0+NZl08bwc5ZE2F7BmVJ7dF5j7C2x1B9IhusNE8woc7kvMne+aNUiH4h5TkDW3tBjV"
    "R4fsAZOVjChFt7Qk9t9yKB8xpdqt9bG9qCoy0HvySU8+QWIsR1dxHDvpY5KVi/rJ2T6GfZGmebQf"
    "Mh4eJv+e3WNZSsJKH5UHTLgATivugTLuoYy9UBIXFEzy4oIyHkKJL6CMPVCwLObLpFwsMP9X040V"
    "J9z1UB7RUnYN5YQFcw/DtGeYehmOXQwxiZNhOsCUjS4Yph6GWJa10LWLIebvZYiWcma48DDMeobZ"
    "/zPEJM7HmfkYZh6GWBasDzH/b9/kpGcxwVgklkXqYoFJnCwmg3InlywmHhZYlm8/VJjQ21iY6Ol+"
    "lVwBl9TMKRsP0GkPdOoFmrmAYhLnA50OmI1vLoBOPUCxLFhzYf54c0WDWcTOWq9EVpSrgJn5wUxJ"
    "11PTr/I0vJwMLdpuNjPfCC2ablmbmQ+kdTDnWyF0b9jhqR8ji79QSwMEFAAAAAgAu5B5XdIF8UZS"
    "AgAARwoAAA0AAAB4bC9zdHlsZXMueG1s3VbbitswEP0V4w+ok5iauCR5qCFQaMvC7kNf5VhOBLq4"
    "srwk/fpqJOe2m+NS+lab4Jk5OjNnpDHOqncnyZ8PnLvkqKTu1+nBue5TlvW7A1es/2A6rj3SGquY"
    "867dZ31nOWt6IimZLWazIlNM6HSz0oPaKtcnOzNot05naZJtVq3R19A8jQG/limevDK5TismRW1F"
    "XMyUkKcYX4TIzkhjE+fVcKJTqP8VF8xHl6SOuZTQxoZoFsuER+8TCykvKhZpDGxWHXOOW731TiSF"
    "6HtstF9OnVext+w0X3xMbxjh4cvUxjbc3rUbQ5uV5K0jhhX7QzCc6ehRG+eMIqsRbG80i0rOtNHw"
    "uXdcymc6rx/tXYFjm8SN/9KEPaeOz6ZXNZoxzehQgdt0Mfm/5+3Eq3GfB9+QDv7PwTj+ZHkrjsE/"
    "tm8EXGoHJXflL9GERmWdfqcRlDc56kFIJ/ToHUTTcP2+O5/fsdoP+V0Bv6rhLRuke7mA6/Rqf+ON"
    "GFR5WfVEjY2rrvZXOsp5cZ1TX0zohh95U42u3dfBTLzhy45XYLyFtuECEGRFEEAEwlpQBmRFHqz1"
    "P/a1xH1FECpcPoaWmLXErMh7CFXhhrUAq/QXaLks87wo4PZW1WMZFdzDoqAfSAgVEgfWomp/u/MT"
    "AzAxNn+YDXjKk2MDW54YUdjyxM4TBPaQOGUJBgDWIg48FDhRJALUolEDrDync4YK4Ws+AZUlhGhI"
    "wfQWBdqogm5wXvAlyvOyBBCBQEaeQ4he2AkIyiAhEMrz+CF98z3Lzt+57PrXcfMbUEsDBBQAAAAI"
    "ALuQeV23R+uKwAAAABYCAAALAAAAX3JlbHMvLnJlbHOdkktuAjEMQK8SZV9MqcQCMazYsEOIC7iJ"
    "56OZxJFjxPT2jdjAIGgRS/+eni2vDzSgdhxz26VsxjDEXNlWNa0AsmspYJ5xolgqNUtALaE0kND1"
    "2BAs5vMlyC3Dbta3THP8SfQKkeu6c7RldwoU9QH4rsOaI0pDWtlxgDNL/83czwrUmp2vrOz8pzXw"
    "pszz9SCQokdFcCz0kaRMi3aUrz6e3b6k86VjYrR43+j/89CoFD35v50wpYnS10UJJm+w+QVQSwME"
    "FAAAAAgAu5B5XfZ1AaowAQAAKQIAAA8AAAB4bC93b3JrYm9vay54bWyNkNFOwzAMRX+lygfQboJJ"
    "TOtemIBJCBBDe89ad7WWxJXjbrCvJ0kpTOKFJ8fX1sm9XpyIDzuiQ/ZhjfNzLlUr0s3z3FctWO2v"
    "qAMXZg2x1RJa3ufUNFjBiqregpN8WhSznMFoQXK+xc6rgfYflu8YdO1bALFmQFmNTi0Xo7NXzvLL"
    "jgSq+FNUo7JFOPnfhdhmR/S4Q4PyWar0NqAyiw4tnqEuVaEy39LpkRjP5ESbTcVkTKkmw2ALLFj9"
    "kTfR5rve+aSI3r3FzKWaFQHYIHtJG4mvg8kjhOWh64Xu0QjwSgs8MPUdun3ChBj5RY50irFmTlso"
    "VaImD6Gu68GPBNBFOp5jGPC6/kaOnBoadFA/B5CPg5CqCieNJZGm1zeT2+C+N+YuaC/uiXT9Y2y8"
    "6vILUEsDBBQAAAAIALuQeV0z6+O6rQAAAPsBAAAaAAAAeGwvX3JlbHMvd29ya2Jvb2sueG1sLnJl"
    "bHO1kT0OgzAMha8S5QAYqNShAqYurBUXiIL5EYFEsavC7RvBAEgdujBZz5a/92RnLzSKeztR1zsS"
    "82gmymXH7B4ApDscFUXW4RQmjfWj4iB9C07pQbUIaRzfwR8ZssiOTFEtDv8h2qbpNT6tfo848Q8w"
    "fKwfqENkKSrlW+Rcwmz2NsFakiiQpSjrXPqyTqSAyxIRLwZpj7Ppk396pT+HXdztV7k1z0e4rSHg"
    "9OviC1BLAwQUAAAACAC7kHldm4ZChBsBAADXAwAAEwAAAFtDb250ZW50X1R5cGVzXS54bWytk89O"
    "wzAMxl+l6nVqMzhwQOsujCvswAuExF2j5p9ib3Rvj9uySqCxDZVLo8b293P8Jau3YwTMOmc9VnlD"
    "FB+FQNWAk1iGCJ4jdUhOEv+mnYhStXIH4n65fBAqeAJPBfUa+Xq1gVruLWXPHW+jCb7KE1jMs6cx"
    "sWdVuYzRGiWJ4+Lg9Q9K8UUouXLIwcZEXHBCnomziCH0K+FU+HqAlIyGbCsTvUjHaaKzAuloAcvL"
    "Gme6DHVtFOig9o5LSowJpMYGgJwtR9HFFTTxkGH83s1uYJC5SOTUbQoR2bUEf+edbOmri8hCkMhc"
    "OeSEZO3ZJ4TecQ36VjhP+COkdvAExbDMH/N3nyf9Wxp5D6H973vWr6WTxk8NiOE9rz8BUEsBAhQD"
    "FAAAAAgAu5B5XUbHTUiVAAAAzQAAABAAAAAAAAAAAAAAAIABAAAAAGRvY1Byb3BzL2FwcC54bWxQ"
    "SwECFAMUAAAACAC7kHldK4WhqOsAAADLAQAAEQAAAAAAAAAAAAAAgAHDAAAAZG9jUHJvcHMvY29y"
    "ZS54bWxQSwECFAMUAAAACAC7kHldmVycIxAGAACcJwAAEwAAAAAAAAAAAAAAgAHdAQAAeGwvdGhl"
    "bWUvdGhlbWUxLnhtbFBLAQIUAxQAAAAIALuQeV2IH1vmggIAAFIKAAAYAAAAAAAAAAAAAACAgR4I"
    "AAB4bC93b3Jrc2hlZXRzL3NoZWV0MS54bWxQSwECFAMUAAAACAC7kHld0gXxRlICAABHCgAADQAA"
    "AAAAAAAAAAAAgAHWCgAAeGwvc3R5bGVzLnhtbFBLAQIUAxQAAAAIALuQeV23R+uKwAAAABYCAAAL"
    "AAAAAAAAAAAAAACAAVMNAABfcmVscy8ucmVsc1BLAQIUAxQAAAAIALuQeV32dQGqMAEAACkCAAAP"
    "AAAAAAAAAAAAAACAATwOAAB4bC93b3JrYm9vay54bWxQSwECFAMUAAAACAC7kHldM+vjuq0AAAD7"
    "AQAAGgAAAAAAAAAAAAAAgAGZDwAAeGwvX3JlbHMvd29ya2Jvb2sueG1sLnJlbHNQSwECFAMUAAAA"
    "CAC7kHldm4ZChBsBAADXAwAAEwAAAAAAAAAAAAAAgAF+EAAAW0NvbnRlbnRfVHlwZXNdLnhtbFBL"
    "BQYAAAAACQAJAD4CAADKEQAAAAA="
]))

CMMD_ROWS = [
    ("D1-0001", "R", 44, 2, "calcification", "Benign", ""),
    ("D1-0002", "L", 40, 2, "mass", "Malignant", "Luminal A"),
    ("D1-0003", "L", 51, 2, "both", "Malignant", "Luminal B"),
    ("D1-0003", "R", 51, 2, "mass", "Benign", ""),
    ("D2-0004", "R", 61, 2, "calcification", "Malignant", "HER2-enriched"),
    ("D2-0005", "L", 38, 2, "mass", "Benign", ""),
]
CMMD_HEADER = ("ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype")


def write_png(path: Path, value: int = 128, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size, value, dtype=np.uint8)
    arr[size[0] // 3:, : size[1] // 2] = 255 - value   # some structure
    Image.fromarray(arr).save(path)
    return path


def write_dcm(path: Path, patient_id: str | None, laterality: str | None, seed: int = 0) -> Path:
    from latentds.testing.synthetic import write_dicom

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).random((16, 12))
    write_dicom(path, img, modality="MG", seed=seed)
    ds = pydicom.dcmread(path)
    if patient_id is None:
        del ds.PatientID
    else:
        ds.PatientID = patient_id
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.save_as(path)
    return path


def cmmd_tree(root: Path, table: str = "xlsx") -> dict[str, tuple[str, str]]:
    """The TCIA layout; returns relative path -> (patient, laterality) of every DICOM."""
    if table == "xlsx":
        (root / "CMMD_clinicaldata_revision.xlsx").write_bytes(CMMD_XLSX)
    else:  # a ';'-delimited CSV export, as found in the wild
        lines = [";".join(CMMD_HEADER)] + [";".join(str(v) for v in r) for r in CMMD_ROWS]
        (root / "CMMD_clinicaldata_revision.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = {
        # (folder, PatientID in the header, ImageLaterality)
        "D1-0001/07-18-2010-NA-NA-79377/1.000000-NA-70244/1-1.dcm": ("D1-0001", "R"),
        "D1-0001/07-18-2010-NA-NA-79377/1.000000-NA-70244/1-2.dcm": ("D1-0001", "R"),
        "D1-0001/07-18-2010-NA-NA-79377/1.000000-NA-70244/1-3.dcm": ("D1-0001", "L"),  # no row: skipped
        "D1-0002/07-04-2011-NA-NA-13434/1.000000-NA-11111/1-1.dcm": ("D1-0002", "L"),
        "D1-0003/01-01-2012-NA-NA-22222/1.000000-NA-33333/1-1.dcm": ("D1-0003", "L"),
        "D1-0003/01-01-2012-NA-NA-22222/1.000000-NA-33333/1-2.dcm": ("D1-0003", "R"),
        "D2-0004/02-02-2013-NA-NA-44444/1.000000-NA-55555/1-1.dcm": ("ANONYMIZED", "R"),  # folder gives the patient
        "D2-0005/03-03-2014-NA-NA-66666/1.000000-NA-77777/1-1.dcm": ("D2-0005", None),  # one row: no laterality needed
    }
    for i, (rel, (pid, lat)) in enumerate(files.items()):
        write_dcm(root / "CMMD" / rel, pid, lat, seed=i)
    return files


# ----------------------------------------------------------------------------- splits

def test_patient_split_is_a_fixed_hash_and_close_to_the_fraction() -> None:
    def reference(pid: str, fraction: float) -> str:
        h = hashlib.sha256(("latentds-split-v1\0" + pid).encode()).digest()
        return "test" if int.from_bytes(h[:8], "big") / 2 ** 64 < fraction else "train"

    ids = [f"P{i:05d}" for i in range(5000)]
    splits = [patient_split(p, 0.2) for p in ids]
    assert splits == [reference(p, 0.2) for p in ids]
    assert 0.18 < splits.count("test") / len(ids) < 0.22
    assert patient_split("P00001", 0.0) == "train" and patient_split("P00001", 1.0) == "test"
    # another salt draws another split
    assert [patient_split(p, 0.2, salt="other") for p in ids] != splits
    with pytest.raises(ValueError):
        patient_split("x", 1.5)


def assert_patient_disjoint(samples: list[Sample]) -> None:
    by_patient: dict[str, set[str]] = {}
    for s in samples:
        by_patient.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in by_patient.values()), by_patient
    assert all(s.split == patient_split(s.patient_id) for s in samples)


# ----------------------------------------------------------------------------- label tables

def test_xlsx_reader_reads_an_openpyxl_workbook(tmp_path: Path) -> None:
    p = tmp_path / "t.xlsx"
    p.write_bytes(CMMD_XLSX)
    rows = read_table(p)
    assert [tuple(r[h] for h in CMMD_HEADER) for r in rows] == [tuple(str(v) for v in r) for r in CMMD_ROWS]


def test_bad_label_files(tmp_path: Path) -> None:
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    with pytest.raises(TaskDataError, match="bad.xlsx"):
        read_table(tmp_path / "bad.xlsx")
    with pytest.raises(TaskDataError, match="not found"):
        read_table(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- CMMD

MALIGNANT = {"D1-0001": {"R": 0}, "D1-0002": {"L": 1}, "D1-0003": {"L": 1, "R": 0}, "D2-0004": {"R": 1},
             "D2-0005": {None: 0}}
CALCIFIED = {"D1-0001": {"R": 1}, "D1-0002": {"L": 0}, "D1-0003": {"L": 1, "R": 0}, "D2-0004": {"R": 1},
             "D2-0005": {None: 0}}


@pytest.mark.parametrize("table", ["xlsx", "csv"])
@pytest.mark.parametrize("task, truth", [("cmmd-malignancy", MALIGNANT), ("cmmd-calcification", CALCIFIED)])
def test_cmmd(tmp_path: Path, table: str, task: str, truth: dict) -> None:
    files = cmmd_tree(tmp_path, table)
    with pytest.warns(UserWarning, match="1 of 8 DICOM files match no row"):
        samples = load_task(task, tmp_path)
    got = {}
    for s in samples:
        rel = Path(s.path).relative_to((tmp_path / "CMMD").resolve()).as_posix()
        folder = rel.split("/")[0]
        assert s.patient_id == folder
        got[rel] = s.label
    expected = {rel: truth[rel.split("/")[0]][lat] for rel, (_, lat) in files.items()
                if lat in truth[rel.split("/")[0]]}
    assert got == expected
    assert len(samples) == 7
    assert_patient_disjoint(samples)


def test_cmmd_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match="CMMD_clinicaldata_revision"):
        load_task("cmmd-malignancy", tmp_path)
    lines = [";".join(CMMD_HEADER), "D1-0001;R;44;2;calcification;Unknown;"]
    (tmp_path / "CMMD_clinicaldata_revision.csv").write_text("\n".join(lines) + "\n")
    write_dcm(tmp_path / "CMMD" / "D1-0001" / "a" / "b" / "1-1.dcm", "D1-0001", "R")
    with pytest.raises(TaskDataError, match="neither Benign nor Malignant"):
        load_task("cmmd-malignancy", tmp_path)
    assert load_task("cmmd-calcification", tmp_path)[0].label == 1
    with pytest.raises(ValueError):
        load_task("cmmd-malignancy", tmp_path, target="mass")


# ----------------------------------------------------------------------------- VinDr-Mammo

VINDR_CSV = """study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split
s001,se1,i001,L,CC,3518,2800,BI-RADS 1,DENSITY C,training
s001,se1,i002,L,MLO,3518,2800,BI-RADS 1,DENSITY C,training
s001,se1,i003,R,CC,3518,2800,BI-RADS 4,DENSITY C,training
s002,se2,i004,L,CC,3518,2800,BI-RADS 2,DENSITY B,test
s003,se3,i005,R,MLO,3518,2800,BI-RADS 5,DENSITY D,training
s004,se4,i006,R,CC,3518,2800,BI-RADS 3,DENSITY A,test
"""


def vindr_tree(root: Path, skip: tuple[str, ...] = ()) -> None:
    (root / "breast-level_annotations.csv").write_text(VINDR_CSV)
    for i, line in enumerate(VINDR_CSV.splitlines()[1:]):
        study, _, image = line.split(",")[:3]
        if image not in skip:
            write_dcm(root / "images" / study / f"{image}.dicom", study, None, seed=i)


def test_vindr_birads(tmp_path: Path) -> None:
    vindr_tree(tmp_path)
    samples = load_task("vindr-birads", tmp_path)
    got = {Path(s.path).stem: (s.label, s.patient_id) for s in samples}
    assert got == {"i001": (0, "s001"), "i002": (0, "s001"), "i003": (3, "s001"), "i004": (1, "s002"),
                   "i005": (4, "s003"), "i006": (2, "s004")}
    assert all(s.path.endswith(".dicom") and Path(s.path).is_file() for s in samples)
    assert_patient_disjoint(samples)
    official = {Path(s.path).stem: s.split for s in load_task("vindr-birads", tmp_path, official_split=True)}
    assert official == {"i001": "train", "i002": "train", "i003": "train", "i004": "test", "i005": "train",
                        "i006": "test"}


def test_vindr_missing_images_are_reported(tmp_path: Path) -> None:
    vindr_tree(tmp_path, skip=("i005",))
    with pytest.raises(TaskDataError, match="1 of 6 labelled images not found.*i005"):
        load_task("vindr-birads", tmp_path)
    with pytest.warns(UserWarning, match="skipped"):
        samples = load_task("vindr-birads", tmp_path, allow_missing=True)
    assert len(samples) == 5


# ----------------------------------------------------------------------------- RSNA Bone Age

def test_boneage_class() -> None:
    assert [boneage_class(m) for m in (0, 1, 11.9, 12, 13, 120, 227.9, 228, 240, -3)] ==         [0, 0, 0, 1, 1, 10, 18, 19, 19, 0]


@pytest.mark.parametrize("nested", [False, True])
def test_rsna_boneage(tmp_path: Path, nested: bool) -> None:
    rows = [(1377, 180, "False"), (1378, 12, "False"), (1379, 94, "True"), (1380, 120, "True"), (1381, 228, "False")]
    (tmp_path / "boneage-training-dataset.csv").write_text(
        "id,boneage,male\n" + "".join(f"{i},{m},{s}\n" for i, m, s in rows))
    folder = tmp_path / "boneage-training-dataset"
    if nested:
        folder = folder / "boneage-training-dataset"
    for i, *_ in rows:
        write_png(folder / f"{i}.png", value=i % 200)
    samples = load_task("rsna-boneage", tmp_path)
    assert {Path(s.path).name: s.label for s in samples} ==         {"1377.png": 15, "1378.png": 1, "1379.png": 7, "1380.png": 10, "1381.png": 19}
    assert {s.patient_id for s in samples} == {str(i) for i, *_ in rows}
    assert TASKS["rsna-boneage"].num_classes == 20
    assert_patient_disjoint(samples)


# ----------------------------------------------------------------------------- GRAZPEDWRI-DX

GRAZ_CSV = """filestem,patient_id,timehash,age,gender,laterality,projection,fracture_visible,metal,cast,diagnosis_uncertain
0001_1297860395_01_WRI-L1_M014,0001,1297860395,14.4,M,L,1,1,,,
0001_1297860435_01_WRI-L2_M014,0001,1297860435,14.4,M,L,2,1,,,
0002_0354485735_01_WRI-R1_F012,0002,0354485735,12.1,F,R,1,,,,
0003_0662359226_01_WRI-L1_M008,0003,0662359226,8.6,M,L,1,1.0,,1,
0003_0662359226_01_WRI-L2_M008,0003,0662359226,8.6,M,L,2,,,1,
0004_1000000000_01_WRI-R1_F010,0004,1000000000,10.0,F,R,1,0,,,1
"""


def graz_tree(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.csv").write_text(GRAZ_CSV)
    for i, line in enumerate(GRAZ_CSV.splitlines()[1:]):
        stem = line.split(",")[0]
        write_png(root / f"images_part{1 + i % 2}" / f"{stem}.png", value=30 + i)


def test_grazpedwri_fracture(tmp_path: Path) -> None:
    graz_tree(tmp_path)
    samples = load_task("grazpedwri-fracture", tmp_path)
    assert {Path(s.path).stem: s.label for s in samples} == {
        "0001_1297860395_01_WRI-L1_M014": 1, "0001_1297860435_01_WRI-L2_M014": 1,
        "0002_0354485735_01_WRI-R1_F012": 0, "0003_0662359226_01_WRI-L1_M008": 1,
        "0003_0662359226_01_WRI-L2_M008": 0, "0004_1000000000_01_WRI-R1_F010": 0}
    assert {Path(s.path).parent.name for s in samples} == {"images_part1", "images_part2"}
    assert sorted({s.patient_id for s in samples}) == ["0001", "0002", "0003", "0004"]
    assert_patient_disjoint(samples)


def test_grazpedwri_errors(tmp_path: Path) -> None:
    graz_tree(tmp_path)
    write_png(tmp_path / "images_part3" / "0002_0354485735_01_WRI-R1_F012.png")   # same stem twice
    with pytest.raises(TaskDataError, match="two images named"):
        load_task("grazpedwri-fracture", tmp_path)
    os.remove(tmp_path / "images_part3" / "0002_0354485735_01_WRI-R1_F012.png")
    (tmp_path / "dataset.csv").write_text(GRAZ_CSV.replace("0002,0354485735,12.1,F,R,1,,", "0002,0354485735,12.1,F,R,1,yes,"))
    with pytest.raises(TaskDataError, match="fracture_visible 'yes'"):
        load_task("grazpedwri-fracture", tmp_path)


# ----------------------------------------------------------------------------- registry / export

def test_registry() -> None:
    assert set(TASKS) == {"cmmd-malignancy", "cmmd-calcification", "vindr-birads", "rsna-boneage",
                          "grazpedwri-fracture"}
    assert [TASKS[t].num_classes for t in sorted(TASKS)] == [2, 2, 2, 20, 5]
    with pytest.raises(ValueError, match="unknown task"):
        load_task("chexpert", "/nonexistent")
    assert issubclass(TaskDataError, LatentdsError)


def test_class_folder_names_sort_in_label_order() -> None:
    names = class_folder_names(20, TASKS["rsna-boneage"].class_names)
    assert sorted(names) == names and names[2] == "02-age-2" and names[19] == "19-age-19"
    assert class_folder_names(3) == ["0", "1", "2"]


def test_to_imagefolder_gives_imagefolder_indices_equal_to_labels(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    graz_tree(tmp_path / "src")
    samples = load_task("grazpedwri-fracture", tmp_path / "src", test_fraction=0.5)
    assert {s.split for s in samples} == {"train", "test"}
    names = TASKS["grazpedwri-fracture"].class_names
    trees = to_imagefolder(samples, tmp_path / "tree", class_names=names)
    assert set(trees) == {"train", "test"}
    for split, tree in trees.items():
        assert sorted(p.name for p in tree.iterdir()) == ["0-no-fracture", "1-fracture"]
        ds = ImageFolder(str(tree), allow_empty=True)
        want = {link_name(s): s.label for s in samples if s.split == split}
        got = {Path(p).name: y for p, y in ds.samples}
        assert got == want
    # links point at the sources, carry no patient id, and a re-run changes nothing
    for s in samples:
        link = trees[s.split] / class_folder_names(2, names)[s.label] / link_name(s)
        assert link.is_symlink() and link.resolve() == Path(s.path).resolve()
        assert s.patient_id not in link.name and "WRI" not in link.name
    before = sorted(str(p) for p in (tmp_path / "tree").rglob("*"))
    to_imagefolder(samples, tmp_path / "tree", class_names=names)
    assert sorted(str(p) for p in (tmp_path / "tree").rglob("*")) == before
    # copies work too, and a clash is an error
    copies = to_imagefolder(samples, tmp_path / "copies", class_names=names, mode="copy")
    assert sum(1 for p in copies["train"].rglob("*.png") if not p.is_symlink()) ==         sum(s.split == "train" for s in samples)
    other = tmp_path / "clash"
    to_imagefolder([samples[0]], other, class_names=names)
    link = other / samples[0].split / class_folder_names(2, names)[samples[0].label] / link_name(samples[0])
    link.unlink()
    os.symlink(samples[1].path, link)
    with pytest.raises(TaskDataError, match="already exists"):
        to_imagefolder([samples[0]], other, class_names=names)
    with pytest.raises(ValueError, match="outside"):
        to_imagefolder([Sample(samples[0].path, 5, "x", "train")], tmp_path / "x", class_names=names)


def test_exported_tree_feeds_latent_dataset(tmp_path: Path) -> None:
    from latentds import LatentDataset

    rows = [(10, 30), (11, 130), (12, 200), (13, 64)]
    (tmp_path / "boneage-training-dataset.csv").write_text("id,boneage,male\n" + "".join(f"{i},{m},True\n" for i, m in rows))
    for i, _ in rows:
        write_png(tmp_path / "boneage-training-dataset" / f"{i}.png", value=40 + i, size=(32, 24))
    samples = load_task("rsna-boneage", tmp_path, test_fraction=0.0)
    trees = to_imagefolder(samples, tmp_path / "tree", class_names=TASKS["rsna-boneage"].class_names)
    ds = LatentDataset(trees["train"], codec="bicubic-f4", cache=tmp_path / "cache", allow_empty=True, crop_roi=False)
    assert len(ds) == 4 and len(ds.classes) == 20
    by_name = {link_name(s): s.label for s in samples}
    for i in range(len(ds)):
        z, y = ds[i]
        assert y == by_name[Path(ds.samples[i][0]).name]
        assert z.ndim == 3 and z.shape[0] == 1
    assert sorted(ds.targets) == sorted(boneage_class(m) for _, m in rows)
