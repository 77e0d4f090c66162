"""Real wireless M-Bus telegrams for the layer tests, with their sources.

The telegrams are as receivers deliver them (from the L-field on, block CRCs removed,
L = the bytes after it) unless ``crc`` says otherwise; values are the references'.
The broad collection (≥ 40 telegrams, pass/fail per manufacturer) is telegrams/.
"""

from __future__ import annotations

from dataclasses import dataclass

WMBUSMETERS = "wmbusmeters/wmbusmeters@4dedd717"


@dataclass(frozen=True)
class Vector:
    """One telegram with what its source says about it."""

    name: str
    hex: str
    key: str | None
    meter_id: str
    manufacturer: str
    expected: dict[str, float]
    source: str
    crc: bool = False
    predecrypted: bool = False

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.hex)

    @property
    def key_bytes(self) -> bytes | None:
        return None if self.key is None else bytes.fromhex(self.key)


VECTORS = [
    Vector(
        "kadenwater-mode5",
        "4e448e2c1782221901077ab5004005339341ab7927f9337cd2175b2f0d121d9a56cbf3fcfcbf0d8ca5"
        "7d0c6741a03a666d99467924a6dbf4de305960917afde729ac19d62a789dce1c66a323cc29cd",
        "82B0551191F51D66EFCDAB8967452301",
        "19228217",
        "KDN",
        {"volume": 81.0976},
        f"{WMBUSMETERS} drivers/src/kadenwater.xmq (total_m3 81.0976)",
    ),
    Vector(
        "aventieswm-long-header-mode5",
        "76442104710007612507727100076121042507B5006005E2E95A3C2A1279A5415E6732679B43369FD5"
        "FDDDD783EEEBB48236D34E7C94AF0A18A5FDA5F7D64111EB42D4D891622139F2952F9D12A20088DFA4"
        "CF8123871123EE1F6C1DCEA414879DDB4E05E508F1826D7EFBA6964DF804C9261EA23BBF03",
        "A004EB23329A477F1DD2D7820B56EB3D",
        "61070071",
        "AAA",
        {"volume": 466.472},
        f"{WMBUSMETERS} drivers/src/aventieswm.xmq (total_m3 466.472)",
    ),
    Vector(
        "kamstrup-multical21-ell-aes-ctr",
        "2A442D2C998734761B168D2091D37CAC21E1D68CDAFFCD3DC452BD802913FF7B1706CA9E355D6C2701CC24",
        "28F64A24988064A079AA2C807D6102AE",
        "76348799",
        "KAM",
        {"volume": 6.408, "external_temperature_min_s1": 19, "flow_temperature_min_s1": 127},
        f"{WMBUSMETERS} simulations/serial_aes.msg (C1; total_m3 6.408, 19 and 127 °C)",
    ),
    Vector(
        "elf2-mode5",
        "6E44010670112724420D7A35006025B2F96D0306197B34C7E4E6F45F434FCB78BCBBE8837A2C253BEC"
        "3E958B3BBBFBE6AE465214941AF544237DB8A69E6C4CE8DFB7A1F64860200BB2E995F1A4F501E7702E"
        "0A581576F60B58CBDA39E1F150F29E04D689C38FD6C430ABD05DD789E0",
        "ACA5769E7902B8A770A7118C11D5F0F6",
        "24271170",
        "APA",
        {"flow_temperature": 22.5, "return_temperature": 22.6},
        f"{WMBUSMETERS} drivers/src/elf2.xmq (t1 22.5 °C, t2 22.6 °C)",
    ),
    Vector(
        "waterstarm-ell-8c-mode5",
        "a144c5142966495070078c20d07a0d0090257db8bb9938a1ff7c4b9a4492f4ea5f278b725057eee683"
        "7c17397e9605f3a448a338bd8407a2a5846632c334dff577f427f054f55e68a00fa5c85ccbc808ccdd"
        "2bb537a83234a50392968f00c1d7473455f9fc4c88fb195ca1712325da8c6aa7fdb7c4b77b9b84a4a0"
        "ccac4f586775fa66007dbdc2c615b69247401e9b9a863ac5a5873484b1b7d0178198e88f701e53",
        "FFEEDDCCBBAA00998877665544332211",
        "50496629",
        "EFE",
        {},
        f"{WMBUSMETERS} drivers/src/waterstarm.xmq",
    ),
    Vector(
        "sontex-format-b-with-crcs",
        "3444EE4D813929271608811D7A51000000046D1912A62B036E0000005170426CE1F1436E00000002FF"
        "2C00000259D6D0D4090265FC0902FD66A00044C4",
        None,
        "27293981",
        "SON",
        {"flow_temperature": 25.16, "external_temperature": 25.56},
        f"{WMBUSMETERS} simulations/simulation_dll_crcs.txt",
        crc=True,
    ),
    Vector(
        "iperl-plain",
        "1844AE4C4455223368077A55000000041389E20100023B0000",
        None,
        "33225544",
        "SEN",
        {"volume": 123.529, "volume_flow": 0.0},
        f"{WMBUSMETERS} simulations/simulation_t1.txt (total_m3 123.529)",
    ),
    Vector(
        "emh-ehzp-mode7-predecrypted",
        "5344A8159955995502028C201D900F002C250C390000ED176BBBB1591ADB7A1D003007102F2F0700583B"
        "74020000000007803CBCD70200000000000728B070200000000000042092A406002F2F2F2F2F2F2F2F2F",
        None,
        "55995599",
        "EMH",
        {"energy": 41171.8, "energy_backward": 186.3},
        f"{WMBUSMETERS} drivers/src/ehzp.xmq (decrypted by wmbusmeters; 41.1718 kWh)",
        predecrypted=True,
    ),
]

# Homegear/Homegear-M-Bus@e5760f85 src/MbusCentral.cpp, test command "C1 short format with
# security mode 7", key 00112233445566778899AABBCCDDEEFF. Received by an Amber stick: its
# frame FF 03 <len> <C … RSSI 0x12> <checksum 0x50>; here the telegram with its L-field.
HOMEGEAR_MODE7 = bytes.fromhex(
    "7146C5143803607403078C0013900F002C250D0000004B5184889B76884D6B38036074C51400071300400710"
    "E1E27070E1D6452826C8DD482AA0419872968AB3FB1CD18A91F80CE4F338E78BE8ED2DD0FE29EC20B84790"
    "05E378B875D596F85804689FA938582548407F4BB303FD0C02FD0B"
)
HOMEGEAR_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
