import pytest

from kd.data.urls import host_of, normalize_url, registrable_domain


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("http://www.Example.COM/", "example.com"),
        ("https://WWW.PayPal.com/Login/Verify.php", "paypal.com/Login/Verify.php"),
        ("http://a.com/x?q=1&amp;r=2", "a.com/x?q=1&r=2"),
        ("http://a.com/x?q=1&amp;amp;amp;r=2", "a.com/x?q=1&r=2"),
        ("ftp://files.example.org/pub/", "files.example.org/pub"),
        ("example.org", "example.org"),
        ("  http://www.x.io/path/  ", "x.io/path"),
        ("http://wwwx.io/", "wwwx.io"),
        ("HTTP://Host.COM?Q=A", "host.com?Q=A"),
    ],
)
def test_normalize_url(raw, expected):
    assert normalize_url(raw) == expected


def test_normalize_is_idempotent():
    url = "https://www.Bank.example.co.uk/Account/?id=1&amp;x=2/"
    assert normalize_url(normalize_url(url)) == normalize_url(url)


@pytest.mark.parametrize(
    "url, domain",
    [
        ("http://login.bank.example.co.uk/x", "example.co.uk"),
        ("paypal.com.secure-login.ru/verify", "secure-login.ru"),
        ("192.168.0.1:8080/admin", "192.168.0.1"),
        ("https://user:pw@mail.google.com/", "google.com"),
        ("intranet/portal", "intranet"),
    ],
)
def test_registrable_domain(url, domain):
    assert registrable_domain(url) == domain


def test_host_of_strips_port_and_userinfo():
    assert host_of("http://u@Sub.Example.com:8443/a?b") == "sub.example.com"
